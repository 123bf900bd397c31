import pandas as pd

from datapipe.compute import run_steps
from shop import app, ds

ds.get_table("users").delete_by_idx(pd.DataFrame({"user_id": [2]}))  # Bob leaves
ds.get_table("orders").delete_by_idx(pd.DataFrame({"order_id": [13]}))  # Cyd's order is cancelled

print(run_steps(ds, app.steps))
print(ds.get_table("totals").get_data().sort_values("user_id").to_string(index=False))
