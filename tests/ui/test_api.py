"""The JSON API, /metrics and the access guard of ``datapipe ui``, against a real server in a thread.

Every endpoint is called with good and with bad input; bad input must give a 4xx with a message
and change nothing (checked by comparing the step and table state before and after).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, List

import pandas as pd
import pytest
from sqlalchemy.engine import make_url

from datapipe.compute import DatapipeApp, run_steps
from datapipe.meta.locks import step_lock
from datapipe.types import IndexDF

MULTIPLES_OF_7 = 5  # ids 0, 7, 14, 21, 28 of 30: each fails its batch of 5


def snapshot(app: DatapipeApp) -> Dict[str, Any]:
    """What an action could change: each step's processed/failed counts, each table's live keys."""
    state: Dict[str, Any] = {}
    for s in app.steps:
        if hasattr(s, "meta") and hasattr(s.meta, "get_counts"):
            state[s.name] = s.meta.get_counts()
    for name in app.catalog.catalog:
        meta = app.catalog.get_datatable(app.ds, name).get_metadata()
        state[name] = sorted(map(str, meta.iloc[:, 0]))
    return state


def sse_events(client: Any, path: str) -> List[Dict[str, Any]]:
    events = []
    with client.stream("GET", path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def assert_error(response: Any, status: int, *parts: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# ---------------------------------------------------------------- graph and steps


def test_pipeline_graph(failing_app, serve, client):
    c = client(serve(failing_app).url)
    body = c.get("/api/pipeline").json()
    nodes = {n["id"]: n for n in body["graph"]["nodes"]}
    assert {"t:items", "t:checked", "t:images", "t:sizes"} <= set(nodes)
    assert nodes["s:check"]["step_kind"] == "BatchTransform"
    edges = {(e["from"], e["to"]) for e in body["graph"]["edges"]}
    assert {("t:items", "s:check"), ("s:check", "t:checked"), ("s:generate_items", "t:items")} <= edges
    assert body["read_only"] is False and body["active_run"] is None


def test_step_states_and_counts(failing_app, serve, client):
    c = client(serve(failing_app).url)
    steps = {s["name"]: s for s in c.get("/api/steps").json()["steps"]}
    failed_keys = len(failing_app.steps[1].meta.get_failed_idx())
    assert failed_keys == 5 * MULTIPLES_OF_7
    check = steps["check"]
    assert (check["state"], check["processed"], check["failed"]) == ("failed", 30, failed_keys)
    assert check["pending"] == failed_keys  # failed keys are retried by the next run
    assert steps["measure"]["state"] == "up_to_date" and steps["measure"]["pending"] == 0
    assert steps["generate_items"]["state"] == "unknown" and steps["generate_items"]["pending"] is None
    assert not any(s["running"] for s in steps.values())


def test_pending_after_a_change(failing_app, serve, client):
    c = client(serve(failing_app).url)
    images = failing_app.ds.get_table("images")
    from PIL import Image

    images.store_chunk(pd.DataFrame({"image_id": ["img9"], "image": [Image.new("RGB", (8, 8), "black")]}))
    measure = c.get("/api/steps/measure").json()
    assert (measure["state"], measure["pending"]) == ("pending", 1)


def test_failed_step_page_has_keys_and_tracebacks(failing_app, serve, client):
    c = client(serve(failing_app).url)
    errors = c.get("/api/steps/check").json()["errors"]
    assert len(errors) == MULTIPLES_OF_7  # one group per failed batch, each with its 5 keys
    for group in errors:
        bad = [k["id"] for k in group["keys"] if k["id"] % 7 == 0]
        assert len(group["keys"]) == 5 and len(bad) == 1
        assert group["error"] == f"ValueError: bad item(s) {bad}: ids divisible by 7 are refused"
        assert group["traceback"].startswith("Traceback (most recent call last)")
        assert "in check" in group["traceback"] and group["traceback"].rstrip().endswith(group["error"])
    failed_ids = set(failing_app.steps[1].meta.get_failed_idx()["id"])
    assert {k["id"] for g in errors for k in g["keys"]} == failed_ids
    few = c.get("/api/steps/check?errors=3").json()["errors"]
    assert sum(len(g["keys"]) for g in few) == 3
    assert_error(c.get("/api/steps/check?errors=-1"), 400, "errors must be between")
    assert_error(c.get("/api/steps/check?errors=many"), 400, "errors must be an integer")


def test_unknown_step(failing_app, serve, client):
    c = client(serve(failing_app).url)
    before = snapshot(failing_app)
    assert_error(c.get("/api/steps/nope"), 404, "unknown step 'nope'", "check")
    for action in ("run", "run-failed", "reset"):
        assert_error(c.post(f"/api/steps/nope/{action}", json={"confirm": "nope"}), 404, "unknown step 'nope'")
    assert_error(c.post("/api/runs", json={"steps": ["check", "nope"]}), 404, "unknown step 'nope'")
    assert_error(c.get("/api/nothing-here"), 404, "no such page")
    assert snapshot(failing_app) == before and c.get("/api/runs").json()["runs"] == []


# ---------------------------------------------------------------- tables


def test_tables_overview_and_summary(failing_app, serve, client):
    c = client(serve(failing_app).url)
    tables = {t["name"]: t for t in c.get("/api/tables").json()["tables"]}
    assert tables["items"]["rows"] == {"count": 30, "exact": True}
    assert tables["images"]["rows"]["count"] == 4
    items = c.get("/api/tables/items").json()
    assert items["primary_keys"] == ["id"] and items["columns"] == ["id", "name", "value"]
    assert items["filterable"] == ["id", "name", "value"]  # an SQL store in the metadata database
    assert items["producers"] == ["generate_items"] and items["consumers"] == ["check"]
    assert c.get("/api/tables/images").json()["filterable"] == ["image_id"]  # files: keys only
    assert_error(c.get("/api/tables/nope"), 404, "unknown table 'nope'", "items")
    assert_error(c.get("/api/tables/nope/rows"), 404, "unknown table 'nope'")


def test_table_pages(failing_app, serve, client):
    c = client(serve(failing_app).url)
    seen = []
    for page in (1, 2, 3):
        body = c.get(f"/api/tables/items/rows?page={page}&page_size=12").json()
        seen += [r["id"] for r in body["rows"]]
        assert body["has_next"] is (page < 3)
        assert body["columns"] == ["id", "name", "value", "update_ts", "process_ts", "deleted"]
    assert seen == list(range(30))
    row = c.get("/api/tables/items/rows?page=1&page_size=1").json()["rows"][0]
    assert row["name"] == "item0" and row["deleted"] is False and row["update_ts"] > 0
    desc = c.get("/api/tables/items/rows?order=desc&page_size=3").json()
    assert [r["id"] for r in desc["rows"]] == [29, 28, 27]
    assert desc["total"] == {"count": 30, "exact": True}


def test_page_past_the_end(failing_app, serve, client):
    c = client(serve(failing_app).url)
    assert_error(c.get("/api/tables/items/rows?page=1000000&page_size=50"), 404, "page 1000000 is past the last row")
    empty = c.get("/api/tables/items/rows?filter=id=999").json()  # page 1 of no rows is not an error
    assert empty["rows"] == [] and empty["has_next"] is False


def test_table_filters(failing_app, serve, client):
    c = client(serve(failing_app).url)

    def ids(query: str) -> List[int]:
        response = c.get(f"/api/tables/items/rows?{query}")
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["rows"]]

    assert ids("filter=id=3") == [3]
    assert ids("filter=name=item4") == [4]  # a data column: joined in the database
    assert ids("filter=value=6.0") == [4]
    assert ids("filter=name=item4&filter=id=5") == []
    assert ids("filter=name=' OR 1=1 --") == []  # a bound value, not SQL
    assert c.get("/api/tables/images/rows?filter=image_id=img2").json()["rows"][0]["image_id"] == "img2"


@pytest.mark.parametrize(
    "query, message",
    [
        ("filter=id", "expected column=value"),
        ("filter==3", "expected column=value"),
        ("filter=bogus=1", "cannot filter table 'items' on 'bogus'"),
        ("filter=id=abc", "'id' holds int values"),
        ("filter=value=nan", "'value' holds float values"),
        ("page=0", "page must be 1 or more"),
        ("page=two", "page must be an integer"),
        ("page_size=100000", "page_size must be between 1 and 500"),
        ("sort=name", "sort must be 'key' or 'update_ts'"),
        ("order=sideways", "order must be 'asc' or 'desc'"),
        ("deleted=maybe", "deleted must be true or false"),
        ("where=1", "unknown parameter(s) ['where']"),
    ],
)
def test_malformed_table_queries(failing_app, serve, client, query, message):
    c = client(serve(failing_app).url)
    assert_error(c.get(f"/api/tables/items/rows?{query}"), 400, message)


def test_filter_on_a_data_column_of_a_file_store_is_refused(failing_app, serve, client):
    c = client(serve(failing_app).url)
    assert_error(c.get("/api/tables/images/rows?filter=image=x"), 400, "filterable columns: ['image_id']")


def test_sort_by_last_change_and_deleted_rows(failing_app, serve, client):
    c = client(serve(failing_app).url)
    items = failing_app.ds.get_table("items")
    items.store_chunk(pd.DataFrame({"id": [17], "name": ["changed"], "value": [0.5]}))
    items.delete_by_idx(IndexDF(pd.DataFrame({"id": [3]})))
    latest = c.get("/api/tables/items/rows?sort=update_ts&order=desc&page_size=2").json()["rows"]
    assert latest[0]["id"] == 17 and latest[0]["name"] == "changed"
    assert 3 not in [r["id"] for r in c.get("/api/tables/items/rows?page_size=50").json()["rows"]]
    with_deleted = c.get("/api/tables/items/rows?page_size=50&deleted=true").json()["rows"]
    gone = [r for r in with_deleted if r["id"] == 3]
    assert len(gone) == 1 and gone[0]["deleted"] is True and gone[0]["name"] is None
    assert c.get("/api/tables/items").json()["rows"]["count"] == 29


def test_image_cells_are_thumbnails(failing_app, serve, client):
    c = client(serve(failing_app).url)
    rows = c.get("/api/tables/images/rows").json()["rows"]
    assert [r["image_id"] for r in rows] == ["img0", "img1", "img2", "img3"]
    assert all(r["image"]["image"].startswith("data:image/png;base64,") for r in rows)


# ---------------------------------------------------------------- runs


def test_run_streams_progress_and_summary(quickstart_app, serve, client):
    served = serve(quickstart_app)
    c = client(served.url)
    response = c.post("/api/runs", json={})
    assert response.status_code == 202
    run = response.json()["run"]
    events = sse_events(c, f"/api/runs/{run['id']}/events")
    kinds = [e["type"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert "step_progress" in kinds and kinds.index("step_progress") < kinds.index("run_end")
    end = events[-1]
    assert end["status"] == "success"
    transform = [s for s in end["summary"] if s["step"].startswith("add_tax")][0]
    n_products = len(quickstart_app.ds.get_table("products").get_metadata())
    assert transform["rows"] == n_products and transform["changed"] == n_products and transform["failed"] == 0
    # the stream of a finished run replays its events and ends
    assert sse_events(c, f"/api/runs/{run['id']}/events") == events
    steps = {s["name"]: s for s in c.get("/api/steps").json()["steps"]}
    assert steps[transform["step"]]["state"] == "up_to_date"
    assert steps[transform["step"]]["last_run"]["rows"] == n_products
    detail = c.get(f"/api/runs/{run['id']}").json()
    assert detail["status"] == "success" and detail["events"] == events
    listed = c.get("/api/runs").json()
    assert listed["active_run"] is None and [r["id"] for r in listed["runs"]] == [run["id"]]


def test_a_second_run_is_refused_while_one_is_going(failing_pipeline, serve, client):
    failing_pipeline.GATE = threading.Event()  # `measure` waits for it
    app = failing_pipeline.app
    app.steps[3].reset_metadata(app.ds)  # `measure` has keys to process
    served = serve(app)
    c = client(served.url)
    first = c.post("/api/steps/measure/run", json={}).json()["run"]
    with client(served.url).stream("GET", f"/api/runs/{first['id']}/events") as stream:
        next(line for line in stream.iter_lines() if line == "event: step_start")  # the run is inside `measure`
        assert_error(c.post("/api/runs", json={}), 409, f"run {first['id']} is still going")
        assert_error(c.post("/api/steps/check/run", json={}), 409, "still going")
        assert c.get("/api/pipeline").json()["active_run"]["id"] == first["id"]
        assert c.get("/api/steps/measure").json()["state"] == "running"
        assert_error(c.post("/api/steps/measure/reset", json={"confirm": "measure"}), 409, "running")
        failing_pipeline.GATE.set()
    served.runs.wait(60)
    assert c.get(f"/api/runs/{first['id']}").json()["status"] == "success"
    assert [r["id"] for r in c.get("/api/runs").json()["runs"]] == [first["id"]]


def test_a_step_run_by_another_process_shows_running_and_is_not_duplicated(failing_app, serve, client):
    c = client(serve(failing_app).url)
    before = snapshot(failing_app)
    with step_lock(failing_app.ds.meta_dbconn, "check"):
        steps = {s["name"]: s for s in c.get("/api/steps").json()["steps"]}
        assert steps["check"]["state"] == "running" and steps["check"]["running"] is True
        assert steps["measure"]["running"] is False
        assert_error(c.post("/api/steps/check/run", json={}), 409, "['check'] are being run by another process")
        assert_error(c.post("/api/runs", json={}), 409, "being run by another process")
        assert_error(c.post("/api/steps/check/reset", json={"confirm": "check"}), 409, "already being run")
        assert "datapipe_step_running{step=\"check\"} 1" in c.get("/metrics").text
    assert snapshot(failing_app) == before
    assert c.get("/api/steps/check").json()["state"] == "failed"


def test_run_failed_keys_only(failing_app, serve, client):
    served = serve(failing_app)
    c = client(served.url)
    step = failing_app.steps[1]
    ok_before = step.meta.get_metadata().query("is_success == True")[["id", "process_ts"]]
    run = c.post("/api/steps/check/run-failed", json={}).json()["run"]
    assert run["kind"] == "failed" and run["steps"] == ["check"]
    end = sse_events(c, f"/api/runs/{run['id']}/events")[-1]
    (summary,) = end["summary"]
    assert summary["rows"] == 5 * MULTIPLES_OF_7 and summary["failed"] == MULTIPLES_OF_7
    ok_after = step.meta.get_metadata().query("is_success == True")[["id", "process_ts"]]
    pd.testing.assert_frame_equal(ok_after.reset_index(drop=True), ok_before.reset_index(drop=True))
    assert_error(c.post("/api/steps/generate_items/run-failed", json={}), 400, "keeps no per-key state")


def test_run_one_step(quickstart_app, serve, client):
    served = serve(quickstart_app)
    c = client(served.url)
    first = quickstart_app.steps[0].name
    run = c.post(f"/api/steps/{first}/run", json={}).json()["run"]
    assert run["steps"] == [first]
    end = sse_events(c, f"/api/runs/{run['id']}/events")[-1]
    assert [s["step"] for s in end["summary"]] == [first] and end["status"] == "success"
    second = c.get(f"/api/steps/{quickstart_app.steps[1].name}").json()
    assert second["state"] == "pending" and second["pending"] > 0


def test_reset_needs_confirmation(failing_app, serve, client):
    c = client(serve(failing_app).url)
    before = snapshot(failing_app)
    assert_error(c.post("/api/steps/measure/reset", json={}), 400, 'needs the body {"confirm": "measure"}')
    assert_error(c.post("/api/steps/measure/reset", json={"confirm": "check"}), 400, "needs the body")
    assert_error(c.post("/api/steps/generate_items/reset", json={"confirm": "generate_items"}), 400, "no per-key")
    assert snapshot(failing_app) == before
    assert c.post("/api/steps/measure/reset", json={"confirm": "measure"}).json() == {"reset": "measure"}
    measure = c.get("/api/steps/measure").json()
    assert (measure["processed"], measure["pending"], measure["state"]) == (0, 4, "pending")


@pytest.mark.parametrize(
    "body, status, message",
    [
        ("{not json", 400, "not valid JSON"),
        ("[1, 2]", 400, "must be a JSON object"),
        ('{"steps": "check"}', 400, '"steps" must be a non-empty list'),
        ('{"steps": []}', 400, '"steps" must be a non-empty list'),
    ],
)
def test_malformed_run_requests(failing_app, serve, client, body, status, message):
    c = client(serve(failing_app).url)
    before = snapshot(failing_app)
    response = c.post("/api/runs", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, status, message)
    assert snapshot(failing_app) == before and c.get("/api/runs").json()["runs"] == []


def test_unknown_run(failing_app, serve, client):
    c = client(serve(failing_app).url)
    assert_error(c.get("/api/runs/42"), 404, "unknown run 42")
    assert_error(c.get("/api/runs/42/events"), 404, "unknown run 42")
    assert_error(c.get("/api/runs/abc"), 400, "run id must be an integer")


# ---------------------------------------------------------------- metrics


def test_metrics(failing_app, serve, client):
    c = client(serve(failing_app).url)
    response = c.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(response.text.splitlines())
    failed = 5 * MULTIPLES_OF_7
    assert f'datapipe_step_pending_keys{{step="check"}} {failed}' in lines
    assert f'datapipe_step_failed_keys{{step="check"}} {failed}' in lines
    assert 'datapipe_step_processed_keys{step="check"} 30' in lines
    assert 'datapipe_step_running{step="check"} 0' in lines
    assert 'datapipe_table_rows{table="items"} 30' in lines
    assert "# TYPE datapipe_step_pending_keys gauge" in lines
    assert not any(line.startswith("datapipe_step_last_run_seconds") for line in lines)


def test_metrics_after_a_run(quickstart_app, serve, client):
    c = client(serve(quickstart_app).url)
    run = c.post("/api/runs", json={}).json()["run"]
    sse_events(c, f"/api/runs/{run['id']}/events")
    text = c.get("/metrics").text
    name = quickstart_app.steps[1].name
    assert f'datapipe_step_last_run_success{{step="{name}"}} 1' in text
    assert f'datapipe_step_last_run_seconds{{step="{name}"}} ' in text


# ---------------------------------------------------------------- safety


def test_read_only_refuses_every_action(failing_app, serve, client):
    c = client(serve(failing_app, read_only=True).url)
    before = snapshot(failing_app)
    assert c.get("/api/pipeline").json()["read_only"] is True
    for path, body in [
        ("/api/runs", {}),
        ("/api/steps/check/run", {}),
        ("/api/steps/check/run-failed", {}),
        ("/api/steps/check/reset", {"confirm": "check"}),
    ]:
        assert_error(c.post(path, json=body), 403, "read-only")
    assert c.get("/api/steps").status_code == 200 and c.get("/metrics").status_code == 200
    assert snapshot(failing_app) == before


def test_token(failing_app, serve, client):
    url = serve(failing_app, token="s3cret-token").url
    anonymous = client(url)
    for path in ("/", "/api/pipeline", "/api/steps", "/metrics", "/static/app.js"):
        assert_error(anonymous.get(path), 401, "a valid token is required")
    assert_error(anonymous.post("/api/runs", json={}), 401, "token")
    assert_error(client(url, headers={"Authorization": "Bearer wrong"}).get("/api/steps"), 401, "token")
    assert client(url, headers={"Authorization": "Bearer s3cret-token"}).get("/api/steps").status_code == 200
    browser = client(url)
    opened = browser.get("/?token=s3cret-token")
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    cookie = opened.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert browser.get("/api/steps").status_code == 200  # the cookie
    assert_error(anonymous.get("/api/steps?token=s3cret-token"), 401, "token")  # only / takes it from the URL
    assert failing_app.steps[1].meta.get_counts()["processed"] == 30


def test_foreign_host_names_are_refused_without_a_token(failing_app, serve, client):
    c = client(serve(failing_app).url)
    assert_error(c.get("/api/steps", headers={"Host": "attacker.example:8765"}), 403, "answers only to localhost")
    assert_error(c.get("/api/steps", headers={"Host": "localhost.attacker.example"}), 403, "only to localhost")
    for host in ("localhost:8765", "127.0.0.2:8765", "[::1]:8765"):
        assert c.get("/api/steps", headers={"Host": host}).status_code == 200


def test_posts_must_be_json_from_the_same_origin(failing_app, serve, client):
    served = serve(failing_app)
    c = client(served.url)
    before = snapshot(failing_app)
    form = c.post("/api/steps/measure/reset", data={"confirm": "measure"})
    assert_error(form, 415, "Content-Type: application/json")
    cross = c.post("/api/steps/measure/reset", json={"confirm": "measure"}, headers={"Origin": "http://evil.example"})
    assert_error(cross, 403, "cross-origin request from http://evil.example refused")
    assert snapshot(failing_app) == before
    same = c.post("/api/steps/measure/reset", json={"confirm": "measure"}, headers={"Origin": served.url})
    assert same.status_code == 200


def test_postgres_passwords_never_reach_the_api(postgres_url, tmp_path, monkeypatch, serve, client):
    """On PostgreSQL (a password in the URL, ignored by the trust-auth test server): masked everywhere;
    the advisory run lock shows as running."""
    url = make_url(postgres_url).set(password="hunter2-secret").render_as_string(hide_password=False)
    monkeypatch.setenv("DATAPIPE_UI_DB", url)
    monkeypatch.setenv("DATAPIPE_UI_FILES", str(tmp_path / "images"))
    from ui_support import HERE, import_path

    app = import_path(HERE / "ui_pipeline.py", "ui_pipeline_pg").build()
    run_steps(app.ds, app.steps)
    c = client(serve(app).url)
    bodies = [c.get(p).text for p in ("/api/pipeline", "/api/steps", "/api/tables", "/api/tables/items",
                                      "/api/tables/items/rows", "/api/steps/check", "/metrics")]
    assert "TableStoreDB('items' in postgresql+psycopg://postgres:***@" in c.get("/api/tables/items").json()["store"]
    assert not any("hunter2" in b for b in bodies)
    with step_lock(app.ds.meta_dbconn, "check"):
        assert c.get("/api/steps/check").json()["state"] == "running"
    assert c.get("/api/steps/check").json()["state"] == "failed"
