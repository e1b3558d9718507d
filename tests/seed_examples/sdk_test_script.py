# Seed 001's SDK test script (test_credit_sync.py), unchanged but for the client's
# configuration, which the test passes in through the environment.
import os

from credit_sync_client import CreditSyncClient

client = CreditSyncClient(
    base_url=os.environ["CREDIT_API_URL"],
    api_key=os.environ["CREDIT_API_KEY"],
    secret_key=os.environ["CREDIT_SECRET"],
    source=os.environ["CREDIT_SOURCE"]
)

def test_sync():
    """测试积分同步"""
    test_user = 123456789

    print("=== 测试1：增加积分 ===")
    result = client.add_credits(test_user, 100, "测试")
    print(f"结果: {result.success}")
    print(f"消息: {result.message}")

    print("\n=== 测试2：查询余额 ===")
    balance = client.get_balance(test_user)
    print(f"余额: {balance['credits'] if balance else '查询失败'}")

    print("\n=== 测试3：查询记录 ===")
    records = client.get_records(test_user, limit=5)
    if records:
        for r in records['records']:
            print(f"  {r['change']:+d} - {r['reason']}")

    print("\n=== 测试4：扣除积分 ===")
    result = client.deduct_credits(test_user, 50, "测试消费")
    print(f"结果: {result.success}")

if __name__ == "__main__":
    test_sync()
