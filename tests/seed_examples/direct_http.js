// Seed 001's Node.js example, unchanged but for its configuration, which the test passes in through
// the environment (the seed hard-codes a URL, key and secret). The result is printed as JSON.
const crypto = require('crypto');
const axios = require('axios');

const API_URL = process.env.CREDIT_API_URL + '/api/credits/sync';
const API_KEY = process.env.CREDIT_API_KEY;
const SECRET = process.env.CREDIT_SECRET;
const SOURCE = process.env.CREDIT_SOURCE;

function generateToken(telegramId, amount, timestamp) {
  const message = `${telegramId}:${amount}:${SOURCE}:${timestamp}`;
  return crypto
    .createHmac('sha256', SECRET)
    .update(message)
    .digest('hex');
}

async function syncCredits(telegramId, amount, reason) {
  const timestamp = Math.floor(Date.now() / 1000);
  const token = generateToken(telegramId, amount, timestamp);

  try {
    const response = await axios.post(
      API_URL,
      {
        telegram_id: telegramId,
        amount: amount,
        source: SOURCE,
        reason: reason,
        timestamp: timestamp,
        token: token
      },
      {
        headers: { 'X-Api-Key': API_KEY }
      }
    );

    return response.data;
  } catch (error) {
    console.error('Error:', error.response?.data || error.message);
    return null;
  }
}

// 使用
(async () => {
  const result = await syncCredits(123456789, 100, '测试奖励');
  console.log(JSON.stringify(result));
})();
