"""Operator subcommands of `personsearch`: watchlist, alerts, search, API keys, webhooks, the API and the demo.

They work on the configured Redis (or the private one of `personsearch up` in ``data_dir``), like `cameras`, and on
the same library calls the HTTP API uses, so the CLI and the API always agree.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def _session(args: argparse.Namespace) -> Iterator[tuple[Any, Any, Any]]:
    """(settings, redis client, keys) for one command; a private Redis started for it is stopped afterwards."""
    from personsearch.cli import _redis_for_cli, _settings
    from personsearch.streams import Keys

    settings = _settings(args)
    r, server = _redis_for_cli(args)
    try:
        yield settings, r, Keys(settings.key_prefix)
    finally:
        if server is not None:
            server.stop()


def save_threshold(settings: Any, threshold: float) -> Path:
    """Record a calibrated threshold in the configured model's weights file (or ONNX export manifest)."""
    import torch

    from detector.weights import DEMO_WEIGHTS, read_weights

    if settings.engine.onnx_dir is not None:
        path = Path(settings.engine.onnx_dir) / "model.json"
        manifest = json.loads(path.read_text())
        manifest.setdefault("meta", {})["match_threshold"] = threshold
        path.write_text(json.dumps(manifest, indent=2))
        return path
    path = Path(settings.engine.weights or DEMO_WEIGHTS)
    blob = read_weights(path)
    blob["meta"] = {**blob.get("meta", {}), "match_threshold": threshold}
    torch.save(blob, path)
    return path


def _box(text: str | None) -> list[float] | None:
    if not text:
        return None
    parts = [float(v) for v in text.replace(" ", "").split(",")]
    if len(parts) != 4:
        raise ValueError(f"a box is x1,y1,x2,y2; got {text!r}")
    return parts


def _ts(text: str | None) -> float | None:
    """Unix seconds, an ISO date-time, or a relative "-15m" / "-2h" / "-1d"."""
    if text is None:
        return None
    if text.startswith("-") and text[-1] in "smhd":
        return time.time() - float(text[1:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]
    try:
        return float(text)
    except ValueError:
        from datetime import datetime

        return datetime.fromisoformat(text).timestamp()


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def cmd_watchlist(args: argparse.Namespace) -> int:
    from personsearch.runtime import match_threshold
    from watchlist.store import PhotoError, PhotoInput, Watchlist

    if args.action == "calibrate":  # needs the model and a labelled set, not Redis
        return _calibrate(args)
    with _session(args) as (settings, r, keys):
        wl = Watchlist(r, keys, settings.watchlist.max_photo_bytes)
        if args.action in ("add", "add-photos"):
            boxes = args.box or []
            if boxes and len(boxes) != len(args.photos):
                raise ValueError(f"{len(args.photos)} photos but {len(boxes)} --box; give one box per photo or none")
            photos = [
                PhotoInput(Path(p).read_bytes(), _box(boxes[i]) if boxes else None) for i, p in enumerate(args.photos)
            ]
            engine = settings.engine.load()
            try:
                if args.action == "add":
                    person = wl.add(engine, args.person_id, photos, args.name or "", args.threshold, args.notes or "")
                else:
                    person = wl.add_photos(engine, args.person_id, photos)
            except PhotoError as e:
                if e.boxes:
                    found = "  ".join(",".join(f"{v:.0f}" for v in b) for b in e.boxes)
                    raise PhotoError(f"{e}; persons found (give one with --box): {found}", e.status, e.boxes) from None
                raise
            print(person.model_dump_json(indent=2))
        elif args.action == "re-embed":
            rejections = sum(len(p.rejections) for p in wl.list())
            persons = wl.reembed(settings.engine.load())
            print(
                f"re-embedded {sum(len(p.photos) for p in persons)} photos of {len(persons)} persons"
                + (f"; dropped {rejections} rejections (detections of the old model)" if rejections else "")
            )
        elif args.action == "list":
            persons = wl.list()
            for p in persons:
                default = f"{match_threshold(settings):.2f}*"
                thr = f"{p.threshold:.2f}" if p.threshold is not None else default
                print(
                    f"{p.person_id:<20} {p.name:<24} photos {len(p.photos):<3} rejections {len(p.rejections):<3} "
                    f"threshold {thr:<6} {p.notes}"
                )
            print("no one on the watchlist" if not persons else "(* the default threshold)")
        elif args.action == "show":
            print(wl.get(args.person_id).model_dump_json(indent=2))
        elif args.action == "update":
            person = wl.update(
                args.person_id, name=args.name, notes=args.notes, threshold=args.threshold,
                clear_threshold=args.default_threshold,
            )  # fmt: skip
            print(person.model_dump_json(indent=2))
        elif args.action == "remove-photo":
            wl.remove_photo(args.person_id, args.photo_id)
            print(f"photo {args.photo_id} of {args.person_id} removed")
        elif args.action == "remove-rejection":
            wl.remove_rejection(args.person_id, args.alert_id)
            print(f"rejection of alert {args.alert_id} removed from {args.person_id}")
        else:
            wl.delete(args.person_id)
            print(f"{args.person_id} removed from the watchlist with every photo and embedding")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from personsearch.cli import _settings
    from watchlist.calibrate import run

    settings = _settings(args)
    if args.save and settings.engine.onnx_dir is None and settings.engine.weights is None:
        raise ValueError("--save writes into the weights file: name it (engine.weights), not the bundled model")
    if args.save and settings.engine.input_size is not None:
        raise ValueError(
            "--save stores the threshold with the model, which runs at its own input size; calibrated at "
            "engine.input_size, set the printed value as watchlist.default_threshold instead"
        )
    cal = run(settings.engine.load(), Path(args.data), args.gallery_size, args.target_fmr,
              Path(args.json) if args.json else None, Path(args.plot) if args.plot else None)  # fmt: skip
    print(cal.table())
    print(
        f"\n{cal.boxes} boxes of {cal.identities} identities: {cal.genuine_pairs} genuine and "
        f"{cal.impostor_pairs} impostor pairs. Set watchlist.default_threshold: {cal.threshold:.2f} "
        f"(false match rate {cal.fmr:.4f} per frame, genuine accept rate {cal.gar:.3f})."
    )
    if args.save:
        print(f"\nmatch_threshold {cal.threshold:.2f} saved in {save_threshold(settings, cal.threshold)}")
    return 0


def _alert_line(a: Any) -> str:
    ack = f"  ack by {a.acknowledged_by or '?'}" if a.acknowledged else ""
    ack += " (false match)" if a.false_match else ""
    latency = f"{1000 * (a.alerted_ts - a.capture_ts):.0f} ms" if a.alerted_ts else "-"
    return (
        f"{_when(a.capture_ts)}  {a.alert_id}  {a.person_id} ({a.person_name})  {a.camera}  score {a.score:.2f}  "
        f"frames {a.frames}  latency {latency}{ack}"
    )


def cmd_alerts(args: argparse.Namespace) -> int:
    from personsearch.streams import AlertMessage, decode
    from watchlist.alerts import AlertLog, AlertRecord
    from watchlist.feedback import acknowledge_alert

    with _session(args) as (_, r, keys):
        log = AlertLog(r, keys)
        if args.action == "list":
            ack = {"yes": True, "no": False}.get(args.acknowledged) if args.acknowledged else None
            alerts = log.list(args.person, args.camera, _ts(args.since), _ts(args.until), ack, args.limit)
            for a in alerts:
                print(_alert_line(a))
            if not alerts:
                print("no alerts")
        elif args.action == "ack":
            note = args.note or ""
            print(_alert_line(acknowledge_alert(r, keys, args.alert_id, args.by, note, args.false_match)))
        elif args.action == "snapshot":
            Path(args.out).write_bytes(log.snapshot(args.alert_id))
            print(f"snapshot of {args.alert_id} written to {args.out}")
        else:  # tail
            last = "$" if not args.from_start else "0-0"
            print("waiting for alerts (Ctrl-C to stop) ...", flush=True)
            try:
                while True:
                    res: Any = r.xread({keys.alerts: last}, count=100, block=1000)
                    for _, entries in res or []:
                        for entry_id, fields in entries:
                            last = entry_id.decode()
                            print(_alert_line(AlertRecord.from_message(decode(AlertMessage, fields))), flush=True)
            except KeyboardInterrupt:
                pass
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import numpy as np

    from index.search import IndexReader, query_embedding
    from personsearch.runtime import engine_identity
    from personsearch.settings import load_settings
    from watchlist.store import decode_photo

    settings = load_settings(Path(args.config) if args.config else None)
    model, dim = engine_identity(settings)
    reader = IndexReader(Path(settings.data_dir) / "index", dim, model, ivf=settings.index.ivf())
    if reader.index() is None:
        raise FileNotFoundError(f"no index snapshot in {Path(settings.data_dir) / 'index'} (is the indexer running?)")
    image, _ = decode_photo(Path(args.photo).read_bytes(), settings.watchlist.max_photo_bytes)
    emb, box = query_embedding(settings.engine.load(), image, _box(args.box))
    cameras = args.cameras.split(",") if args.cameras else None
    hits = reader.search(np.asarray(emb), k=args.k, cameras=cameras, since=_ts(args.since), until=_ts(args.until))
    rows = []
    for h in hits:
        rec = h.record
        snap = reader.snapshot_path(rec)
        rows.append(
            {
                "tracklet_id": rec.tracklet_id, "camera": rec.camera, "score": round(h.score, 4),
                "start": _when(rec.start_ts), "end": _when(rec.end_ts), "frames": rec.frames,
                "best_box": rec.best_box, "snapshot": str(snap) if snap else None,
            }
        )  # fmt: skip
    if args.json:
        print(json.dumps({"box": box, "hits": rows}, indent=2))
    else:
        print(f"query box {tuple(round(v) for v in box)}; {len(rows)} tracklets")
        for i, row in enumerate(rows, 1):
            print(f"{i:>3}. {row['score']:.3f}  {row['camera']:<10} {row['start']} .. {row['end']}  {row['snapshot']}")
    return 0


def cmd_apikeys(args: argparse.Namespace) -> int:
    from personsearch.auth import ApiKeyStore

    with _session(args) as (_, r, keys):
        store = ApiKeyStore(r, keys)
        if args.action == "create":
            key, secret = store.create(args.name)
            print(f"API key {key.key_id} ({key.name}) created. The secret is shown only now; keep it:\n{secret}")
        elif args.action == "list":
            for k in store.list():
                print(f"{k.key_id}  {k.name:<24} created {_when(k.created_at)}  last used {_when(k.last_used_at)}")
        else:
            store.revoke(args.key_id)
            print(f"API key {args.key_id} revoked")
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    from watchlist.delivery import WebhookRegistry

    with _session(args) as (_, r, keys):
        reg = WebhookRegistry(r, keys)
        if args.action == "add":
            hook = reg.add(args.url, args.secret, args.description or "")
            print(f"webhook {hook.webhook_id} -> {hook.url}")
            print(f"signing secret (HMAC-SHA256; shown only now): {hook.secret}")
        elif args.action == "list":
            hooks = reg.list()
            for h in hooks:
                st = reg.status(h.webhook_id)
                err = f"  last error: {st.last_error} ({_when(st.last_error_ts)})" if st.last_error else ""
                state = "enabled" if h.enabled else "DISABLED"
                print(
                    f"{h.webhook_id}  {h.url}  {state}  delivered {st.delivered}  "
                    f"failed attempts {st.failed_attempts}  gave up {st.gave_up}{err}"
                )
            if not hooks:
                print("no webhooks")
        elif args.action in ("enable", "disable"):
            reg.update(args.webhook_id, enabled=args.action == "enable")
            print(f"webhook {args.webhook_id} {args.action}d")
        else:
            reg.remove(args.webhook_id)
            print(f"webhook {args.webhook_id} removed")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from personsearch.demo import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            out=Path(args.out), seed=args.seed, cameras=args.cameras, seconds=args.seconds, fps=args.fps,
            duration_s=args.duration, json_path=Path(args.json) if args.json else None,
            config=Path(args.config) if args.config else None, api_port=args.api_port,
        )
    )  # fmt: skip
    return 0


def add_commands(sub: Any) -> None:
    """Register the operator subcommands on the `personsearch` parser."""
    w = sub.add_parser("watchlist", help="add, list, update and remove watchlist persons")
    w.add_argument("--config", help="settings YAML")
    ws = w.add_subparsers(dest="action", required=True)
    wa = ws.add_parser("add", help="add a person from one or more photos")
    wa.add_argument("person_id")
    wa.add_argument("photos", nargs="+", help="photo files (JPEG, PNG, ...)")
    wa.add_argument("--box", action="append", help="x1,y1,x2,y2 of the person, once per photo (default: detect)")
    wa.add_argument("--name")
    wa.add_argument("--threshold", type=float, help="cosine threshold (default: watchlist.default_threshold)")
    wa.add_argument("--notes")
    wp = ws.add_parser("add-photos", help="more photos of a listed person")
    wp.add_argument("person_id")
    wp.add_argument("photos", nargs="+")
    wp.add_argument("--box", action="append")
    ws.add_parser("list", help="every person")
    wc = ws.add_parser("calibrate", help="measure the default threshold for the model on a labelled set")
    wc.add_argument("--data", required=True, help="a set in the CUHK-SYSU layout (e.g. `personsearch synth`)")
    wc.add_argument("--gallery-size", type=int, default=100)
    wc.add_argument("--target-fmr", type=float, default=0.01, help="false match rate per frame to stay within")
    wc.add_argument("--json", help="write the curve and the recommendation here")
    wc.add_argument("--plot", help="PNG of the genuine-accept and false-match curves")
    wc.add_argument("--save", action="store_true", help="store the threshold in the model's weights file (its meta)")
    ws.add_parser("re-embed", help="embed every stored photo again with the configured model (after a model change)")
    wsh = ws.add_parser("show", help="one person with their photos")
    wsh.add_argument("person_id")
    wu = ws.add_parser("update", help="change name, notes or threshold")
    wu.add_argument("person_id")
    wu.add_argument("--name")
    wu.add_argument("--notes")
    wu.add_argument("--threshold", type=float)
    wu.add_argument("--default-threshold", action="store_true", help="use the default threshold again")
    wrp = ws.add_parser("remove-photo", help="delete one photo and its embedding")
    wrp.add_argument("person_id")
    wrp.add_argument("photo_id")
    wrr = ws.add_parser("remove-rejection", help="take back a rejection (an alert acknowledged as a false match)")
    wrr.add_argument("person_id")
    wrr.add_argument("alert_id")
    wr = ws.add_parser("remove", help="delete a person, their photos and embeddings")
    wr.add_argument("person_id")
    w.set_defaults(func=cmd_watchlist)

    a = sub.add_parser("alerts", help="follow, list and acknowledge alerts")
    a.add_argument("--config", help="settings YAML")
    asub = a.add_subparsers(dest="action", required=True)
    at = asub.add_parser("tail", help="print alerts as they are raised")
    at.add_argument("--from-start", action="store_true", help="first every alert still in the stream")
    al = asub.add_parser("list", help="the audit log, newest first")
    al.add_argument("--person")
    al.add_argument("--camera")
    al.add_argument("--since", help="Unix seconds, ISO time or relative (-1h)")
    al.add_argument("--until")
    al.add_argument("--acknowledged", choices=["yes", "no"])
    al.add_argument("--limit", type=int, default=50)
    aa = asub.add_parser("ack", help="acknowledge an alert")
    aa.add_argument("alert_id")
    aa.add_argument("--by", default="cli")
    aa.add_argument("--note")
    aa.add_argument(
        "--false-match", action="store_true",
        help="it was someone else: their detection stops matching the person (a rejection, see `watchlist show`)",
    )  # fmt: skip
    asn = asub.add_parser("snapshot", help="save an alert's snapshot")
    asn.add_argument("alert_id")
    asn.add_argument("out")
    a.set_defaults(func=cmd_alerts)

    s = sub.add_parser("search", help="search the indexed tracklets with a photo")
    s.add_argument("photo")
    s.add_argument("--box", help="x1,y1,x2,y2 of the person (default: the one person detected)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--cameras", help="comma-separated camera ids")
    s.add_argument("--since")
    s.add_argument("--until")
    s.add_argument("--json", action="store_true")
    s.add_argument("--config", help="settings YAML")
    s.set_defaults(func=cmd_search)

    k = sub.add_parser("apikeys", help="create, list and revoke API keys")
    k.add_argument("--config", help="settings YAML")
    ks = k.add_subparsers(dest="action", required=True)
    kc = ks.add_parser("create")
    kc.add_argument("name")
    ks.add_parser("list")
    kr = ks.add_parser("revoke")
    kr.add_argument("key_id")
    k.set_defaults(func=cmd_apikeys)

    h = sub.add_parser("webhooks", help="add, list, enable, disable and remove alert webhooks (HMAC-SHA256 signed)")
    h.add_argument("--config", help="settings YAML")
    hs = h.add_subparsers(dest="action", required=True)
    ha = hs.add_parser("add")
    ha.add_argument("url")
    ha.add_argument("--secret", help="signing secret (default: generated)")
    ha.add_argument("--description")
    hs.add_parser("list")
    for action, text in (("enable", "deliver again"), ("disable", "deliver nothing until enabled")):
        hs.add_parser(action, help=text).add_argument("webhook_id")
    hr = hs.add_parser("remove")
    hr.add_argument("webhook_id")
    h.set_defaults(func=cmd_webhooks)

    d = sub.add_parser("demo", help="the whole product on generated cameras, scored against ground truth")
    d.add_argument("--out", default="data/demo", help="where the cameras and the run's state go")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--cameras", type=int, default=2)
    d.add_argument("--seconds", type=float, default=40.0, help="length of each generated camera video")
    d.add_argument(
        "--fps",
        type=float,
        help="frames per second sampled per camera (default: what the detector keeps up with here, at most 5)",
    )
    d.add_argument("--duration", type=float, help="stop after this many seconds (default: when the videos end)")
    d.add_argument("--json", help="write the summary here")
    d.add_argument("--api-port", type=int, default=8080)
    d.add_argument("--config", help="settings YAML (engine, thresholds)")
    d.set_defaults(func=cmd_demo)
