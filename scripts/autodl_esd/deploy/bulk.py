"""Stop or delete every deployment whose name matches a pattern, exactly the set the user saw.

`--name-glob 'demo-*'` without `--yes` previews: every match with its state and live
containers, and `expect_uuids`, the set to confirm. With `--yes --expect-uuids U1,U2` the
deployments are listed again; only when the matches are still exactly that set is each one
stopped/deleted, one change at a time through `effects.apply_change`. A set that changed
(a new `demo-x`, one already deleted) is `confirmation_required` again with the difference,
and nothing is done. `--yes` without `--expect-uuids` is a preview too: acting on whatever
matches at that moment is not acting on what the user agreed to.

`--exclude PATTERN` (repeatable, whole-name globs like --name-glob) takes exceptions out of
the matches before anything else: the preview shows them apart (`excluded`), the
`--expect-uuids` comparison and the acting see only what is left. The preview's hint offers
`--expect-uuids` for exactly that set, conditional on the user confirming exactly it.

The result has one outcome per deployment (`done`, `skipped` or `failed`, with
`took_effect`, `cost_so_far_yuan` read before the change, and the `guards` still watching
it); an interrupt reports the outcomes so far and the one in flight.
"""

from __future__ import annotations

from typing import Any, Callable

from ..core.cli import UsageError, confirmation_required
from ..platform.effects import Change, apply_change, took_effect_of
from ..core.errors import ApiError, AutoDLError
from ..platform.resolve import DEPLOYMENT_UUID_PATTERN, deployment_summary, deployments_matching, split_excluded
from ..money.guard import GUARDS_NOTE, guards_watching
from ..money.spend import cost_before_change, deployment_impact

# The uuid list an agent pastes back; comma separated so it is one shell word.
UUID_SEPARATOR = ","


def parse_expected(text: str | None) -> list[str] | None:
    if text is None:
        return None
    uuids = [part.strip() for part in text.split(UUID_SEPARATOR) if part.strip()]
    bad = [uuid for uuid in uuids if not DEPLOYMENT_UUID_PATTERN.match(uuid)]
    if bad:
        raise UsageError(f"--expect-uuids 中有格式不对的部署 UUID: {', '.join(bad)}",
                         "原样使用预览输出的 details.expect_uuids (逗号分隔的 15 位十六进制 UUID)。")
    return sorted(set(uuids))


def preview_item(client: Any, deployment: dict[str, Any]) -> dict[str, Any]:
    """One match as the user must see it: its state and the containers it would stop."""
    impact = deployment_impact(client, deployment)
    return {**impact["deployment"], "live_containers": impact["live_containers"],
            "live_container_count": impact["live_container_count"]}


def run_bulk(
    client: Any,
    ctx: Any,
    *,
    pattern: str,
    exclude: list[str] | None = None,
    yes: bool,
    expected_text: str | None,
    verb: str,
    action: str,
    change_for: Callable[[dict[str, Any]], Change],
    skip_reason: Callable[[dict[str, Any]], str | None] = lambda deployment: None,
) -> dict[str, Any]:
    """Preview, or act on exactly the confirmed set; the script's result."""
    expected = parse_expected(expected_text)
    matches, excluded = split_excluded(deployments_matching(client, pattern), exclude)
    # What the user sees set apart: in every preview, the mismatch and the result.
    shown_excluded = ({"exclude": list(exclude), "excluded": [deployment_summary(d) for d in excluded]}
                      if exclude else {})
    uuids = sorted(d["uuid"] for d in matches)
    if not yes or expected is None:
        if not matches:
            return _nothing_matches(pattern, shown_excluded)
        items = [preview_item(client, d) for d in matches]
        live = sum(item["live_container_count"] for item in items)
        expect = UUID_SEPARATOR.join(uuids)
        apart = f", 另有 {len(excluded)} 个被 --exclude 去掉, 不受影响" if exclude else ""
        raise confirmation_required(
            f"{verb}名称匹配 {pattern!r} 的 {len(matches)} 个部署 (共 {live} 个容器在运行或启动中{apart})",
            {"action": action, "name_glob": pattern, **shown_excluded, "matches": items, "count": len(items),
             "expect_uuids": expect},
            hint=f"把 details.matches 中的每个部署 (名称、状态、运行中的容器){' 和 details.excluded' if exclude else ''} "
            f"告诉用户。只有用户要{verb}的正是 details.matches 这 {len(items)} 个 (不多不少) 时, 才在同一命令 "
            f"(同样的 --name-glob{' 与 --exclude' if exclude else ''}) 后加 --yes --expect-uuids {expect} 重新执行, "
            f"只会{verb}这些部署; 用户要留下其中某些时, 不要加 --yes: 用 --exclude 名称 (可重复) 去掉它们后重新预览。"
            "届时匹配的集合若有变化, 会再次返回 confirmation_required 并列出差别, 什么都不做。",
        )
    if uuids != expected:
        added = [d for d in matches if d["uuid"] not in set(expected)]
        removed = [uuid for uuid in expected if uuid not in set(uuids)]
        raise confirmation_required(
            f"名称匹配 {pattern!r} 的部署与确认时不同 (新增 {len(added)} 个, 不再匹配 {len(removed)} 个), 没有{verb}任何部署",
            {"action": action, "name_glob": pattern, **shown_excluded, "added": [preview_item(client, d) for d in added],
             "removed": removed, "expected_uuids": expected, "matches": [deployment_summary(d) for d in matches],
             "count": len(matches), "expect_uuids": UUID_SEPARATOR.join(uuids)},
            hint="把差别 (details.added / details.removed) 告诉用户; 同意按现在的集合执行时, 用 details.expect_uuids "
            "作为 --expect-uuids 重新执行。",
        )
    return _apply_each(client, ctx, pattern, matches, verb, change_for, skip_reason, shown_excluded)


def _guards_of(uuid: str) -> dict[str, Any]:
    """`guards` for one item, as the single stop/delete lists them (the note is said once, on top)."""
    watching = guards_watching(uuid)
    return {"guards": watching["guards"]} if watching else {}


def _nothing_matches(pattern: str, shown_excluded: dict[str, Any]) -> dict[str, Any]:
    if shown_excluded.get("excluded"):
        note = f"名称匹配 {pattern!r} 的部署都被 --exclude 去掉了 (见 excluded), 什么都没有做。"
    else:
        note = f"没有名称匹配 {pattern!r} 的部署, 什么都没有做 (通配符匹配整个名称, 区分大小写)。"
    return {"name_glob": pattern, **shown_excluded, "items": [], "count": 0, "done": 0, "skipped": 0, "failed": 0,
            "note": note}


def _apply_each(
    client: Any, ctx: Any, pattern: str, matches: list[dict[str, Any]], verb: str,
    change_for: Callable[[dict[str, Any]], Change], skip_reason: Callable[[dict[str, Any]], str | None],
    shown_excluded: dict[str, Any],
) -> dict[str, Any]:
    outcomes: list[dict[str, Any]] = []
    pending = [d["uuid"] for d in matches]
    # An interrupt reports what happened to each deployment so far and which were not touched.
    ctx.partial.update(name_glob=pattern, outcomes=outcomes, not_sent=pending)
    for deployment in sorted(matches, key=lambda d: d["uuid"]):
        uuid = deployment["uuid"]
        # status_before: read before the change (a "running" here is not a failed stop).
        summary = {"deployment_uuid": uuid, "name": deployment.get("name"),
                   "deployment_type": deployment.get("deployment_type"), "status_before": deployment.get("status")}
        reason = skip_reason(deployment)
        if reason:
            pending.remove(uuid)
            outcomes.append({**summary, "outcome": "skipped", "took_effect": False, "reason": reason, **_guards_of(uuid)})
            continue
        # Read before the change (still `not_sent` if interrupted here): after a delete,
        # cost_report no longer sees the deployment, so this is its last cost figure.
        summary.update(cost_before_change(client, deployment))
        pending.remove(uuid)
        in_flight: dict[str, Any] = {}
        ctx.partial["in_flight"] = in_flight
        # An interrupt (not an AutoDLError) leaves `in_flight` in the partial result: it says
        # this deployment's change may have been sent (took_effect unknown).
        try:
            _after, report = apply_change(change_for(deployment), client, ctx.progress, in_flight)
        except AutoDLError as error:
            ctx.partial.pop("in_flight", None)
            outcomes.append({**summary, "outcome": "failed", "took_effect": took_effect_of(error),
                             "error_type": error.error_type.value, "message": error.message, "hint": error.hint,
                             **({"check": error.details["check"]} if "check" in error.details else {}),
                             **_guards_of(uuid)})
            ctx.progress.log(f"{verb}部署 {uuid} 失败: {error.message}")
            continue
        ctx.partial.pop("in_flight", None)
        outcomes.append({**summary, "outcome": "done", **report, **_guards_of(uuid)})
        ctx.progress.log(f"已{verb}部署 {uuid} ({deployment.get('name')})")
    counts = {kind: sum(1 for o in outcomes if o["outcome"] == kind) for kind in ("done", "skipped", "failed")}
    result = {"name_glob": pattern, **shown_excluded, "items": outcomes, "count": len(outcomes), **counts,
              # What the whole batch had cost before the change (items whose read failed count 0).
              "cost_so_far_yuan": round(sum(o.get("cost_so_far_yuan") or 0.0 for o in outcomes), 3)}
    if any(o.get("guards") for o in outcomes):
        result["guards_note"] = "items[].guards 列出的" + GUARDS_NOTE
    if counts["failed"]:
        first = next(o for o in outcomes if o["outcome"] == "failed")
        failure = ApiError(
            f"{verb} {len(outcomes)} 个匹配 {pattern!r} 的部署: {counts['done']} 个成功, {counts['failed']} 个失败。",
            msg=first["message"], retryable=False,
            hint="逐个查看 details.items 的 outcome 与 took_effect: took_effect 为 unknown 的先按其 check 查看; "
            "确认没有生效的可以用同一命令重新预览再执行 (已完成的不会再匹配或会被跳过)。",
        )
        failure.details.update(result)
        raise failure
    return result
