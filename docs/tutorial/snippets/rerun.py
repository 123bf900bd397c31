import pandas as pd

from datapipe.compute import run_steps
from shop import app, ds

print(run_steps(ds, app.steps))  # nothing changed since the last run

ds.get_table("orders").store_chunk(pd.DataFrame({"order_id": [13], "user_id": [3], "amount": [4]}))
result = run_steps(ds, app.steps)  # only Cyd's totals are recomputed
print(result)
print(result["order_totals"].processed, "user(s) recomputed")
