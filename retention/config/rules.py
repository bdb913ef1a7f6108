"""The [[rules]]: what each one selects, how its records expire, and what it does to them."""

from __future__ import annotations

from retention.config.model import ACTIONS, TRANSFORMS, ConnectorConfig, Expire, Rule
from retention.connector import ConnectorType
from retention.errors import ConfigError
from retention.model import ClientRegistry, OptionValue, Transform
from retention.settings import Section, Setting, is_missing
from retention.timeutil import Duration, parse_duration


def rules_of(top: Section, connectors: dict[str, ConnectorConfig], types: dict[str, ConnectorType],
           clients: ClientRegistry | None, pseudonym_key: Setting | None) -> tuple[Rule, ...]:
    raw = top.raw("rules")
    if is_missing(raw) or not isinstance(raw, list) or not raw:
        raise top.error("rules", "expected at least one [[rules]] table")
    rules: list[Rule] = []
    for index, item in enumerate(raw):
        rule = _rule(Section(item, f"rules[{index}]", top.source), connectors, types, clients, pseudonym_key)
        if rule.name in {r.name for r in rules}:
            raise ConfigError(f"duplicate rule name {rule.name!r}", source=top.source, key=f"rules[{index}].name")
        rules.append(rule)
    return tuple(rules)


def _rule(section: Section, connectors: dict[str, ConnectorConfig], types: dict[str, ConnectorType],
          clients: ClientRegistry | None, pseudonym_key: Setting | None) -> Rule:
    name = section.get("name", str)
    if not name.strip() or any(ch.isspace() for ch in name):
        raise section.error("name", f"a rule name is one word without spaces, got {name!r}")
    section.path = f"rules[{name}]"
    connector = section.get("connector", str)
    if connector not in connectors:
        raise section.error("connector", f"unknown connector {connector!r}; defined: {', '.join(connectors)}")
    kind = types[connector]
    target = section.get(kind.target_key, str, None)
    if not target:
        raise section.error(kind.target_key, f"is required: the {kind.target_key} this rule enforces on a "
                                             f"{kind.type_name} connector")
    scope: dict[str, OptionValue] = {option.name: section.get(option.name, option.kind, option.default)
                                     for option in kind.rule_options}
    client_key = scope.get("client_key")
    expire = _expire(section, clients, kind, client_key if isinstance(client_key, str) else None)
    action = section.choice("action", ACTIONS)
    if action not in kind.actions:
        raise section.error("action", f'action = "{action}" is not possible on a {kind.type_name} connector: '
                                      f"{kind.actions_note}")
    marker = section.get("marker", str, None)
    transforms = _transforms(section, action, kind)
    if action == "delete" and (marker or transforms):
        raise section.error("marker" if marker else "transforms",
                            'applies only to action = "anonymize" or "deidentify" (delete removes the record)')
    if action != "delete" and (not marker or not transforms):
        raise section.error("marker" if not marker else "transforms",
                            f'action = "{action}" needs `marker` (a field set when a record is processed, '
                            "so it is never processed twice) and `transforms`")
    if any(t.kind == "hmac" for t in transforms) and pseudonym_key is None:
        raise section.error("transforms", "the hmac transform needs secrets.pseudonym_key")
    key = _key(section)
    protected = {f for f in (*(key or ()), marker, expire.field, expire.client_field) if f}
    for transform in transforms:
        if transform.field in protected:
            raise section.error(f"transforms.{transform.field}", "cannot transform the key, the marker or a "
                                                                  "field the expiry is computed from")
    max_fraction = section.get("max_fraction", float, 0.5)
    if not 0 < max_fraction <= 1:
        raise section.error("max_fraction", f"expected a fraction above 0 and at most 1.0, got {max_fraction}")
    max_records = section.get("max_records", int, None)
    if max_records is not None and max_records < 0:
        raise section.error("max_records", "expected a count of 0 or more")
    rule = Rule(
        name=name,
        policy=section.get("policy", str, ""),
        connector=connector,
        target=target,
        key=key,
        expire=expire,
        action=action,
        marker=marker,
        transforms=transforms,
        max_fraction=max_fraction,
        max_records=max_records,
        batch_size=section.positive("batch_size", None),
        scope=scope,
        # a store that names the end user by a key pattern (S3's subject_key) has no subject field
        subject_field=None if "subject_key" in scope else section.get("subject_field", str, None),
    )
    section.done()
    return rule


def _key(rule: Section) -> tuple[str, ...] | None:
    """`key = "id"` or `key = ["tenant_id", "id"]`: the fields that name a record, in order."""
    raw = rule.raw("key")
    if is_missing(raw):
        return None
    fields = (raw,) if isinstance(raw, str) else tuple(raw) if isinstance(raw, list) else None
    if not fields or not all(isinstance(f, str) and f for f in fields) or len(set(fields)) != len(fields):
        raise rule.error("key", 'expected a field name or a list of distinct field names, e.g. "id" or '
                                '["created_month", "id"]')
    rule.get("key", str if isinstance(raw, str) else list)  # mark it read
    return fields


def _expire(rule: Section, clients: ClientRegistry | None, kind: ConnectorType, client_key: str | None) -> Expire:
    section = rule.section("expire", required=True)
    assert section is not None
    after = section.parsed("after", parse_duration, None)
    field = section.get("field", str, None)
    client_field = section.get("client_field", str, None) if not client_key else None
    grace = section.parsed("grace", parse_duration, None)
    section.done()
    if client_key:
        # on S3 the client id is read from the object key: the pattern stands in for the client field
        if "{client_id}" not in client_key:
            raise rule.error("client_key", f'expected a key pattern with {{client_id}}, e.g. "clients/{{client_id}}/", '
                                           f"got {client_key!r}")
        client_field = client_key
    if after is not None and field is None:
        field = kind.default_age_field
    if after is None and client_field is None:
        raise section.error(None, 'expected `after` + `field` (an age rule) and/or `client_field` '
                                  '(a client-lifetime rule), e.g. { after = "24 months", field = "collected_at" }')
    if after is not None and field is None:
        raise section.error("field", "is required with `after`: the timestamp field the age is measured from")
    if field is not None and after is None:
        raise section.error("after", "is required with `field`: how long after it the record expires")
    if grace is not None and client_field is None:
        raise section.error("grace", "applies only with `client_field`")
    if client_field is not None and clients is None:
        raise section.error("client_field", "a client-lifetime rule needs the [clients] registry")
    return Expire(after, field, client_field, grace or (Duration(0, "day") if client_field else None))


def _transforms(rule: Section, action: str, kind: ConnectorType) -> tuple[Transform, ...]:
    section = rule.section("transforms")
    if section is None:
        return ()
    transforms = []
    for field, spec in section.items():
        key = section.key(field)
        if isinstance(spec, str):
            transform = Transform(field, spec)
        elif isinstance(spec, dict) and len(spec) == 1:
            (name, arg), = spec.items()
            transform = Transform(field, name, arg)
        else:
            raise ConfigError('expected a transform name ("redact") or a one-key table ({ mask = 4 })',
                              source=section.source, key=key)
        transforms.append(_check_transform(transform, key, section.source, action, kind))
    return tuple(transforms)


def _check_transform(transform: Transform, key: str, source: str, action: str, kind: ConnectorType) -> Transform:
    def fail(message: str) -> ConfigError:
        return ConfigError(message, source=source, key=key)

    name, arg = transform.kind, transform.arg
    if name not in TRANSFORMS:
        raise fail(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}")
    if name not in kind.transforms:
        raise fail(f"transform {name!r} is not supported by {kind.type_name} connectors "
                   f"(supported: {', '.join(sorted(kind.transforms))})")
    if name == "hmac" and action != "deidentify":
        raise fail('hmac is a keyed, consistent pseudonym: it is allowed only with action = "deidentify" '
                   '(anonymize must be irreversible)')
    takes = {"redact": str, "generalize_date": str, "mask": int}
    if arg is not None and (name not in takes or not isinstance(arg, takes[name]) or isinstance(arg, bool)):
        expected = {"redact": '{ redact = "TEXT" }', "generalize_date": '{ generalize_date = "month" }',
                    "mask": "{ mask = 4 }"}.get(name, f'"{name}" (it takes no argument)')
        raise fail(f"expected {expected}, got {{ {name} = {arg!r} }}")
    if name == "generalize_date" and arg not in ("month", "year"):
        raise fail('expected { generalize_date = "month" } or { generalize_date = "year" }')
    if name == "mask" and (arg is None or int(arg) < 0):
        raise fail("expected { mask = N }: how many trailing characters to keep")
    if name == "redact" and arg is None:
        transform = Transform(transform.field, name, "[redacted]")
    return transform

