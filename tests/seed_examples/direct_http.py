# Seed 001's "direct HTTP request" Python example, unchanged but for its configuration, which the test
# passes in through the environment (the seed hard-codes a URL, key and secret).
import os
import requests
import time
import hmac
import hashlib

# 配置
API_URL = os.environ["CREDIT_API_URL"] + "/api/credits/sync"
API_KEY = os.environ["CREDIT_API_KEY"]
SECRET = os.environ["CREDIT_SECRET"]
SOURCE = os.environ["CREDIT_SOURCE"]

def generate_token(telegram_id, amount, timestamp):
    """生成验证令牌"""
    message = f"{telegram_id}:{amount}:{SOURCE}:{timestamp}"
    return hmac.new(
        SECRET.encode(),
        message.encode(),
        hashlib.sha256
    ).hexdigest()

def sync_credits(telegram_id, amount, reason):
    """同步积分"""
    timestamp = int(time.time())
    token = generate_token(telegram_id, amount, timestamp)

    response = requests.post(
        API_URL,
        json={
            "telegram_id": telegram_id,
            "amount": amount,
            "source": SOURCE,
            "reason": reason,
            "timestamp": timestamp,
            "token": token
        },
        headers={"X-Api-Key": API_KEY}
    )

    return response.json()

# 使用
result = sync_credits(123456789, 100, "测试奖励")
print(result)
