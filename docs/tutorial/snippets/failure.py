import pandas as pd

from datapipe.compute import run_steps
from shop import app, ds

ds.get_table("orders").store_chunk(pd.DataFrame({"order_id": [14], "user_id": [1], "amount": [-5]}))

result = run_steps(ds, app.steps)  # does not raise: the failed key is recorded and retried next run
step = result["order_totals"]
print("ok:", result.ok, "| failed keys:", step.failed_keys)
print(step.errors[0].message)
print(step.errors[0].keys.to_dict("records"))
