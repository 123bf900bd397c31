import pandas as pd

from datapipe.compute import run_steps
from shop import app, ds

ds.get_table("orders").store_chunk(pd.DataFrame({"order_id": [14], "user_id": [1], "amount": [5]}))
result = run_steps(ds, app.steps, fail_fast=True)  # fail_fast: raise instead of recording a failure
print(result)
