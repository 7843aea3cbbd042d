"""From data to submission under one deadline: search, confirm, retrain, predict.

    python -m search.auto --gpus 4 --time-budget 2h --input cifar_test_nolabel.pkl --out submission.csv --name course
    python -m search.auto --gpus 0 --dataset synthetic --subset 400 --time-budget 3m --input test.npy --out sub.csv --dry-run

First a plan (`search.plan`), from times measured here: an epoch of a middle-sized config
and a prediction of the real --input with TTA. When the deadline is too short for a
search to pay, the plan says so and trains a fixed recipe (`trainable.zoo.DEADLINE_RECIPE`
scaled into the budget) for the whole time. Otherwise four stages, each a function over
the experiment folder:

1. search: `search.run` for its share of the time (every `search.run` flag applies), with
   an ASHA horizon that fits the deadline;
2. confirm (`search.confirm`): the top `--confirm` configs and the fixed recipe, each trained
   to the end of a longer horizon, ranked on validation; the test set is never used to choose;
3. retrain: the confirmed winner on train + val, EMA on, `--seeds` seeds, to the time left
   before the predict stage: the learning rate follows the elapsed share of that time, so
   the model ends annealed and on time even if the machine slows down (if every seed
   diverges, the next confirmed config while time remains);
4. predict: EMA weights with TTA into `--out`. The summary then names the report command
   (`python -m analysis.report runs/NAME`, with a stage table): `search` never imports
   `analysis`, which reads its records.

Every stage asks the clock when it starts: a stage that runs late takes from the next,
never from the deadline, and the whole command ends within --time-budget (+5% at most),
the start-up (data, Ray, the timings) counted apart. With `--minimize` (a Pareto search)
`--pick` says which model of the front is wanted: `best`, `knee` or `under:N`.

Everything is recorded in `runs/NAME/auto.json` (the plan; each stage's planned and used
seconds and what it decided; each run of the command, a --resume adding one); `--resume`
continues from the stage that was running.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

IMPORTED = time.time()  # the command's start-up counts from here

from trainable.cli import parse_duration, run_main, sleep_when_waiting  # noqa: E402

if __name__ == "__main__":  # the command, not an import: before torch loads, for its deadline
    sleep_when_waiting()
from search.confirm import RECIPE_ID, parse_pick, stage_confirm  # noqa: E402
from search.ledger import Record, total_seconds  # noqa: E402
from search.plan import (CONFIRM_MULTIPLE, MAX_RETRAIN_EPOCHS, PREDICT_MARGIN, STAGES, Plan,  # noqa: E402
                         epoch_seconds, make_plan, planned_concurrency, predict_seconds, probe_epoch_seconds,
                         search_trials, sized_recipe, space_epoch_seconds)
from search.settings import SearchSettings, build_parser, settings_from_parsed  # noqa: E402
from search.tune.resources import ray_overhead, ray_stop_seconds  # noqa: E402
from trainable.errors import UserError  # noqa: E402

MIN_DEADLINE_S = 10.0  # under this nothing useful fits: the retrain alone loads data and builds a model


@dataclass
class AutoSettings:
    """The flags of `search.auto` beyond those of `search.run`."""

    input: str = ""
    out: str = "submission.csv"
    confirm: int = 2
    confirm_factor: int = 3
    seeds: int | None = None  # None: as many as run in parallel without costing wall time
    shares: dict[str, float] | None = None  # None: the plan's (search.plan)
    dry_run: bool = False
    force: bool = False
    pick: str = "best"  # best, knee or under:N (search.confirm.parse_pick)


def check_inputs(a: AutoSettings, channels: int = 3) -> Any:
    """What `search.predict` would refuse, refused now rather than after the deadline; returns
    the input's images (the plan times a prediction of them)."""
    from search.predict import read_input

    parse_pick(a.pick)
    out = Path(a.out)
    if not out.parent.is_dir():
        raise UserError(f"--out {a.out}: the folder {out.parent} does not exist")
    if out.exists() and not a.force:
        raise UserError(f"{out} exists; pass --force to overwrite it or choose another --out")
    if not a.input:
        raise UserError("--input is required: the unlabelled images to predict (pickle, .npy or an image folder)")
    if a.confirm < 1 or a.confirm_factor < CONFIRM_MULTIPLE:
        raise UserError(f"--confirm must be at least 1 and --confirm-factor at least {CONFIRM_MULTIPLE}")
    if a.seeds is not None and a.seeds < 1:
        raise UserError("--seeds must be at least 1")
    if a.shares is not None and (any(v < 0 for v in a.shares.values()) or abs(sum(a.shares.values()) - 1) > 1e-6):
        raise UserError(f"--shares must be four non-negative numbers summing to 1, got {a.shares}")
    images, _ = read_input(Path(a.input), channels=channels)  # raises UserError with the reason
    return images


# ----------------------------------------------------------------------------- the stages
def stage_search(s: SearchSettings, plan: Plan, seconds: float, resume: bool) -> Any:
    from search.run import run_search

    after = ray_stop_seconds(s.address)  # the search's budget counts Ray's start, not its stop
    # The fixed recipe runs first in the search (where the space can build it): the search's
    # best is then weighed against a known-good config at the same horizon.
    extra = {**s.extra, "warm_configs": [plan.recipe] if plan.recipe else [], "stage": "auto: search"}
    trials = plan.trials or search_trials(s.trials, s.extra.get("given"), plan.expected_trials)  # 0: a --shares plan
    return run_search(replace(s, max_epochs=plan.max_epochs, time_budget=f"{max(1.0, seconds - after):.1f}s",
                              trials=trials, resume=resume, extra={**extra, "given": None} if resume else extra))


def stage_retrain(s: SearchSettings, seconds: float, order: list[str], configs: dict[str, dict[str, Any]],
                  seeds: int, resume: bool, record: Record, images: Any, num_classes: int) -> dict[str, Any]:
    """Retrain the confirmed winner to the time left (`seconds`, the predict stage's share
    included: it is measured again here with the winner's shape and kept back); if every
    seed diverges, the next config while time remains."""
    import torch

    from search.retrain import retrain
    from trainable.data import DataSpec

    final = s.folder / "final"
    deadline = time.time() + seconds
    tried = []
    for trial_id in order:
        config = {**configs[trial_id], "epochs": MAX_RETRAIN_EPOCHS}
        gpus = torch.cuda.device_count() if s.gpus != 0 else 0
        tail = predict_seconds(config, images[:256], num_classes, gpus) * len(images) / max(1, len(images[:256]))
        tail = tail * PREDICT_MARGIN
        left = deadline - time.time()
        if tried and left < 2 * tail:
            break  # no time for another config
        spec = DataSpec(s.dataset, s.data_dir, val_fraction=0.0, split_seed=config["seed"], subset=s.subset)
        folders = [final] if seeds == 1 else [final / f"seed_{i}" for i in range(seeds)]
        again = resume and not tried and all((f / "checkpoint.pt").exists() for f in folders)
        if not again and final.exists():
            shutil.rmtree(final)  # a retrain killed before every seed had a checkpoint starts over
        print(f"retrain: {'the fixed recipe' if trial_id == RECIPE_ID else f'trial {trial_id}'} for "
              f"{(left - tail) / 60:.1f} min x {seeds} seed(s) (then {tail:.0f} s kept for the prediction)",
              flush=True)
        parallel = seeds > 1 and torch.cuda.device_count() > 1
        result = retrain(config, spec, final, seeds=seeds, ema_decay=0.999, resume=again, compile_model=s.compile,
                         parallel=parallel, time_budget_s=left, tail_s=tail)
        epochs = [len(seed.get("epochs", [])) for seed in result["per_seed"]]
        tried.append({"trial_id": trial_id, "epochs": max(epochs, default=0), "status": result["status"]})
        if result["status"] != "diverged":
            return {"trial_id": trial_id, "epochs": max(epochs, default=0), "seeds": seeds, "tried": tried,
                    "config": config, **{k: v for k, v in result.items() if k.startswith("test_acc")}}
        print(f"retrain: every seed of {trial_id} diverged; trying the next confirmed config", flush=True)
        record.save()
    raise UserError("every retrained seed diverged and no time is left for another config; "
                    f"see {final / 'metrics.json'}")


def stage_predict(s: SearchSettings, a: AutoSettings) -> dict[str, Any]:
    """The submission (EMA weights, TTA)."""
    from search.predict import predict_labels, read_input, write_submission

    final = s.folder / "final"
    images, ids = read_input(Path(a.input))
    labels = predict_labels(final, images, tta=True, use_ema=True)
    write_submission(Path(a.out), ids, labels.tolist())
    return {"submission": str(Path(a.out).resolve()), "rows": len(ids)}


# ----------------------------------------------------------------------------- the command
def shared_plan(s: SearchSettings, a: AutoSettings, total: float, plan: Plan) -> Plan:
    """The plan with --shares' split instead of its own (a search plan: the shares say so)."""
    if a.shares is None:
        return plan
    # The predict stage keeps at least the time its timed pass asks for; the other three
    # split the rest in the proportions given.
    predict = max(total * a.shares["predict"], plan.seconds["predict"])
    rest = sum(a.shares[stage] for stage in STAGES[:3]) or 1.0
    seconds = {**{stage: (total - predict) * a.shares[stage] / rest for stage in STAGES[:3]}, "predict": predict}
    return replace(plan, mode="search", seconds=seconds,
                   reason="the split given by --shares", confirm_configs=a.confirm + 1,
                   confirm_epochs=a.confirm_factor * plan.max_epochs,
                   expected_trials=max(plan.expected_trials, 1))


def run_auto(s: SearchSettings, a: AutoSettings, started: float | None = None) -> dict[str, Any]:
    """Plan, then run (or resume) the stages; return auto.json's content. `started`: when the
    command began (its start-up counts from there; default now)."""
    import torch

    from search.records import read_auto
    from search.run import load_search_data
    from search.settings import absolute_paths, check_settings
    from trainable.zoo import DEADLINE_RECIPE, fit_to_budget

    started = started or time.time()
    if not s.time_budget:
        raise UserError("--time-budget is required: the deadline the whole run is planned against")
    total = parse_duration(s.time_budget)
    check_settings(s)
    s = absolute_paths(s)
    saved = read_auto(s.folder)
    # A resume may write the --out that the run it continues was writing.
    writing = bool(saved) and s.resume and Path(saved["auto"]["out"]) == Path(a.out).resolve()
    if s.resume and saved is None:
        raise UserError(f"nothing to resume: {s.folder} has no auto.json")
    if not s.resume and s.folder.exists() and any(s.folder.iterdir()):
        raise UserError(f"experiment {s.folder} already exists; pass --resume to continue it, or choose another --name")
    data, num_classes = load_search_data(s)
    channels = data.images.shape[1]
    images = check_inputs(replace(a, force=a.force or writing), channels)
    a = replace(a, input=str(Path(a.input).resolve()), out=str(Path(a.out).resolve()))
    train_images, val_images = s.data_spec.split_sizes(torch.from_numpy(data.labels))
    if saved:
        plan = Plan(**saved["plan"])  # a resume keeps the plan its deadline was split by
    else:
        gpus, concurrent = planned_concurrency(s)
        epoch_s = space_epoch_seconds(s, num_classes, channels, train_images, gpus)
        # The retrain runs alone: on a CPU with every thread, on a GPU as a lone trial does.
        retrain_epoch_s = probe_epoch_seconds(s.param_budget, s.cpus or os.cpu_count() or 1, train_images, gpus)
        recipe = {**fit_to_budget(DEADLINE_RECIPE, s.param_budget, num_classes, channels), "seed": s.seed}
        sample = images[:256]
        predict_s = predict_seconds(recipe, sample, num_classes, gpus) * len(images) / max(1, len(sample))
        plan = replace(shared_plan(s, a, total, make_plan(s, a, total, concurrent, epoch_s, gpus, predict_s,
                                                          retrain_epoch_s, ray_overhead(s.address))), recipe=recipe)
        if plan.mode == "recipe":  # the recipe alone: at the size that trains enough epochs in the time
            threads = s.cpus or os.cpu_count() or 1
            whole = train_images + val_images  # the retrain trains on train + val
            recipe, epochs = sized_recipe(
                DEADLINE_RECIPE, s.param_budget, plan.seconds["retrain"],
                lambda config: epoch_seconds(config, threads, whole, gpus), num_classes, channels)
            plan = replace(plan, recipe={**recipe, "seed": s.seed}, retrain_epochs_estimate=max(1, int(epochs)))
    startup = time.time() - started
    print(plan.describe(), flush=True)
    print(f"start-up (data, Ray, timings) took {startup:.0f} s; the deadline counts from here", flush=True)
    # A few epochs and the prediction; a plan with a search also starts Ray twice (search, confirm).
    minimum = plan.middle_epoch_s / (1 - s.val_fraction) * 3 + plan.seconds["predict"]
    if plan.mode == "search":
        minimum += 2 * ray_overhead(s.address)
    minimum = max(minimum, MIN_DEADLINE_S)
    if total < minimum:
        raise UserError(f"--time-budget {s.time_budget} is too short for a few epochs and a prediction here: "
                        f"give at least {minimum / 60:.1f} min ({minimum:.0f} s)")
    if a.dry_run:
        return {"plan": asdict(plan), "dry_run": True}

    data_record = saved or {"plan": asdict(plan), "auto": asdict(a), "stages": {}, "running": None,
                            "time_budget_s": total}
    s.folder.mkdir(parents=True, exist_ok=True)
    record = Record(s.folder, data_record, started, startup)
    stages = record.data["stages"]
    try:
        for stage in STAGES:
            entry = stages.get(stage, {})
            if entry.get("status") == "done":
                continue
            resume = s.resume and entry.get("status") == "running"
            if stage == "search":  # killed before the search wrote its settings: it starts afresh
                from search.records import SETTINGS

                resume = resume and (s.folder / SETTINGS).exists()
            if plan.mode == "recipe" and stage in ("search", "confirm"):
                record.start(stage, 0.0)
                record.finish(stage, skipped=True)
                continue
            # What is left of the deadline, shared among this stage and the ones after it
            # in the plan's proportions: a late stage takes from the next, not the deadline.
            left = total - record.used()
            later = STAGES[STAGES.index(stage):]
            weight = sum(plan.seconds[st] for st in later) or 1.0
            seconds = max(1.0, left * plan.seconds[stage] / weight)
            if stage == "retrain":  # it keeps back the predict stage's time itself, measured again
                seconds = max(1.0, left)
            record.start(stage, seconds if stage != "retrain" else seconds - plan.seconds["predict"])
            print(f"\n== {stage}: {seconds / 60:.1f} min", flush=True)
            if stage == "search":
                outcome = stage_search(s, plan, seconds, resume)
                record.finish(stage, trials=outcome.counts, best=outcome.best and outcome.best["trial_id"])
            elif stage == "confirm":
                search_s = replace(s, max_epochs=plan.max_epochs)
                # A plan saved by an older version without a confirm stage: 0 epochs skip it.
                count, epochs = (plan.confirm_configs - 1, plan.confirm_epochs) if plan.confirm_configs else (1, 0)
                record.finish(stage, **stage_confirm(search_s, a.pick, count, epochs, seconds, resume, plan.recipe,
                                                     plan.epoch_s_estimate, plan.concurrent, val_images))
            elif stage == "retrain":
                confirm = stages["confirm"]
                order = confirm.get("confirm_order") or [RECIPE_ID]
                configs = confirm.get("configs") or {RECIPE_ID: plan.recipe}
                gpus = 0 if s.gpus == 0 else torch.cuda.device_count()
                seeds = a.seeds or plan.seeds or max(1, gpus)
                record.finish(stage, **stage_retrain(s, seconds, order, configs, seeds, resume, record, images,
                                                     num_classes))
            else:
                facts = stage_predict(s, a)
                record.finish(stage, **facts)
    finally:
        record.close()
    return record.data


def summary(result: dict[str, Any], folder: Path) -> str:
    stages = result["stages"]
    retrained = stages["retrain"]
    confirm = stages.get("confirm", {})
    wall, startup = total_seconds(result)
    runs = len(result.get("runs", []))
    used = sum(st.get("used_s", 0.0) for st in stages.values())
    test = retrained.get("test_acc_ema_mean", retrained.get("test_acc_ema_tta_mean", float("nan")))
    spread = f" ± {retrained.get('test_acc_ema_std', 0.0):.4f}" if retrained["seeds"] > 1 else ""
    lines = ["", f"done in {wall / 60:.1f} min{f' over {runs} runs' if runs > 1 else ''}: the stages used "
                 f"{used / 60:.1f} of {result['time_budget_s'] / 60:.1f} min, start-up {startup:.0f} s"]
    for stage in STAGES:
        st = stages[stage]
        note = "  (skipped)" if st.get("skipped") else ""
        lines.append(f"  {stage:<8} planned {st.get('planned_s', 0) / 60:5.1f} min, used "
                     f"{st.get('used_s', 0) / 60:5.1f}{note}")
    lines.append(result["plan"].get("reason", ""))
    if confirm.get("pick", "best") != "best":
        lines.append(f"pick: {confirm['pick']} (of the search's front by {confirm.get('objective', 'params')})")
    if confirm.get("skipped") and result["plan"].get("mode") == "search":
        trusted = (confirm.get("confirm_order") or [None])[0] == RECIPE_ID
        lines.append("confirm: skipped, too short to run a candidate past the search's horizon; " + (
            "the fixed recipe is trusted over a pick at that horizon" if trusted else "the search's order stands"))
    if not confirm.get("skipped"):
        tau = confirm.get("kendall_tau")
        lines.append(f"confirm: Kendall tau {tau if tau is None else round(tau, 2)} between the search's order and "
                     f"the confirm stage's; the pick {'changed' if confirm.get('pick_changed') else 'held'}"
                     + (f" (a lead within the validation noise, {confirm['noise_margin']:.3f}, keeps the recipe first)"
                        if confirm.get("recipe_kept") else ""))
    who = "the fixed recipe" if retrained["trial_id"] == RECIPE_ID else f"trial {retrained['trial_id']}"
    lines += [f"retrained {who} for {retrained['epochs']} epochs x {retrained['seeds']} seed(s): test accuracy "
              f"(EMA, read once at the end) {test:.4f}{spread}",
              f"submission: {stages['predict']['submission']} ({stages['predict']['rows']} rows)", "next:"]
    if (folder / "trials.csv").is_file():  # the report reads the experiment; search never imports analysis
        lines.append(f"  python -m analysis.report {folder}      # plots and report.md, with the stage table")
        lines.append(f"  python -m analysis.table {folder}")
    if result["plan"].get("mode") == "recipe" and result["plan"].get("search_from_s"):
        lines.append(f"  a --time-budget of {result['plan']['search_from_s'] / 60:.0f} min or more lets it search "
                     "on this machine (a smaller --subset or a GPU shortens that)")
    return "\n".join(lines)


def parse_shares(text: str) -> dict[str, float]:
    """'0.35,0.15,0.47,0.03' -> the four stage shares."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--shares takes four numbers, e.g. 0.35,0.15,0.47,0.03; got {text!r}") from None
    if len(values) != len(STAGES):
        raise UserError(f"--shares takes four numbers (search, confirm, retrain, predict), got {len(values)}")
    return dict(zip(STAGES, values))


def build_auto_parser() -> Any:
    # search.run's optional --time-budget is this command's required deadline.
    p = build_parser(time_budget_help="required: the deadline for everything, start-up apart, e.g. 15m, 1h, 2h30m")
    p.prog = "python -m search.auto"
    p.description = __doc__.split("\n\n")[0]
    g = p.add_argument_group("search.auto: from data to submission under --time-budget (required)")
    g.add_argument("--input", metavar="PATH", help="unlabelled images to predict: pickle with b'data' and b'ids', .npy, or a folder")
    g.add_argument("--out", dest="auto_out", metavar="CSV", default="submission.csv",
                   help="the submission CSV (default submission.csv)")
    g.add_argument("--confirm", type=int, default=2,
                   help="top search configs trained again at the longer horizon, with the fixed recipe (default 2)")
    g.add_argument("--confirm-factor", type=int, default=3,
                   help="the confirm horizon at most this multiple of the search's (default 3; at least "
                        f"{CONFIRM_MULTIPLE}, the least it runs, or it is skipped)")
    g.add_argument("--seeds", type=int, help="retrain seeds (default: one per GPU, so they cost no wall time; 1 on a CPU)")
    g.add_argument("--shares", help="shares of the deadline for search, confirm, retrain, predict, e.g. "
                                    "0.35,0.15,0.47,0.03; always a search, past the plan's rules for when one pays "
                                    "(predict keeps at least its timed share) (default: the plan's, from times "
                                    "measured here)")
    g.add_argument("--pick", default="best",
                   help="which model of the search to confirm, retrain and submit: best (highest val_acc), knee "
                        "(the knee of the front of val_acc against --minimize's cost, params without it) or "
                        "under:N (the best costing at most N, e.g. under:1M params) (default best)")
    g.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    g.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return p


def options_from_parsed(args: dict[str, Any]) -> tuple[SearchSettings, AutoSettings]:
    """(search settings, auto settings) from `build_auto_parser`'s parsed flags."""
    args = dict(args)
    shares = args.pop("shares", None)
    auto = AutoSettings(input=args.pop("input") or "", out=args.pop("auto_out"), confirm=args.pop("confirm"),
                        confirm_factor=args.pop("confirm_factor"), seeds=args.pop("seeds"),
                        shares=parse_shares(shares) if shares else None,
                        dry_run=args.pop("dry_run"), force=args.pop("force"), pick=args.pop("pick"))
    return settings_from_parsed(args), auto


def main(argv: Sequence[str] | None = None, started: float | None = None) -> int:
    settings, auto = options_from_parsed(vars(build_auto_parser().parse_args(argv)))
    result = run_auto(settings, auto, started=started)
    if result.get("dry_run"):
        return 0
    print(summary(result, settings.folder))
    return 0


if __name__ == "__main__":
    run_main(lambda argv: main(argv, started=IMPORTED), sys.argv[1:])
