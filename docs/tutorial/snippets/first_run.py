import pandas as pd

from datapipe.compute import run_steps
from shop import app, ds

ds.get_table("users").store_chunk(
    pd.DataFrame({"user_id": [1, 2, 3], "name": ["Ann", "Bob", "Cyd"]})
)
ds.get_table("orders").store_chunk(
    pd.DataFrame({"order_id": [10, 11, 12], "user_id": [1, 1, 2], "amount": [5, 7, 3]})
)

result = run_steps(ds, app.steps)
print(result)
print(ds.get_table("totals").get_data().sort_values("user_id").to_string(index=False))
