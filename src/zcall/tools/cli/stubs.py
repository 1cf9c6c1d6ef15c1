"""``zcall stubs``: write a typed Python module from what servers report, so mypy and IDEs check calls.

For each service (one per ``ENDPOINT`` argument) the module has three ``typing.Protocol`` classes, one
per proxy face, named from the service (``inventory`` gives ``Inventory``):

- ``Inventory``: blocking, for ``SyncClient.proxy`` and ``Peer.proxy(name)``;
- ``AsyncInventory``: ``async def`` methods, for ``AsyncClient.proxy`` and ``Peer.aproxy(name)``;
- ``FutureInventory``: methods returning ``concurrent.futures.Future[R]`` and taking ``callback=``/
  ``errback=``, for ``AsyncClient.proxy_async`` and ``Peer.proxy_async(name)``.

A dotted prefix (``stock.count``, ``stock.reserve``) becomes a read-only property typed with a Protocol
of its own (``InventoryStock``, ``AsyncInventoryStock``, ...), so ``api.stock.count("x")`` type-checks
the way the proxy calls it; a name that is both a method and a prefix gets ``__call__`` there. Type
the proxy with ``typing.cast``: ``api = cast(Inventory, client.proxy)``.

Signatures come from ``zcall.methods``: each parameter's kind, annotation and whether it has a default
(``params``; older servers: parsed from the ``signature`` text). An annotation is kept when a type
checker can resolve it from the stub alone: builtins, and names from the standard library;
``--import-types MODULE`` trusts a module of your own. Anything else (a server-side class the client may
not have) is ``Any``, and the docstring says what the server has. The modules an annotation names are
imported under ``TYPE_CHECKING`` only, and nothing the server reports is written into the stub
unchecked (names must be identifiers, annotations plain type expressions, text goes into escaped
docstrings), so importing a stub runs no call.
Built-ins (``zcall.*``) are left out; they stay callable through the proxy.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import importlib.util
import keyword
import os
import re
import sys
import tempfile
import textwrap
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .common import EXIT_OK, UsageError, add_mesh_option, endpoints, err, one_shot

__all__ = ["ServiceListing", "add_parsers", "cmd_stubs", "fetch_listing", "render_stubs"]

_BUILTIN_TYPES = frozenset(
    name for name in dir(builtins) if isinstance(getattr(builtins, name), type) and not name.startswith("_")
)
_TYPING_NAMES = frozenset(typing.__all__)
"""What ``str(Signature)`` writes without its module (``Optional[int]``, ``Any``): the stub qualifies them."""
_WIDTH = 100
_ANY = "_Any"


@dataclass
class ServiceListing:
    """One service as a server reports it: its name (``zcall.ping``), methods (``zcall.methods``), and
    where it was read."""

    name: str
    methods: list[dict[str, Any]]
    endpoint: str = ""


@dataclass
class _Param:
    name: str
    kind: str  # positional_only, positional_or_keyword, var_positional, keyword_only, var_keyword
    annotation: str | None
    has_default: bool


@dataclass
class _Node:
    """A name prefix: the methods right under it and the prefixes below it."""

    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    children: dict[str, _Node] = field(default_factory=dict)


# -- fetching ---------------------------------------------------------------------------------------


def fetch_listing(eps: list[str], timeout: float, security: Any = None) -> ServiceListing:
    """Ask the server at ``eps`` for its name (``zcall.ping``) and its methods (``zcall.methods``)."""
    from ...client.sync import SyncClient

    with SyncClient(eps, timeout=timeout, security=security) as client:
        methods = client.call("zcall.methods")
        try:
            pong = client.call("zcall.ping")
        except Exception:  # a server without zcall.ping still has a listing worth typing
            pong = {}
    name = pong.get("service") if isinstance(pong, dict) else None
    if not isinstance(methods, list):
        raise UsageError(f"{','.join(eps)} answered zcall.methods with {type(methods).__name__}, not a list")
    return ServiceListing(str(name or "service"), methods, ",".join(eps))


# -- types ------------------------------------------------------------------------------------------


class _Types:
    """Decides which annotations a stub can keep, and what it must import for them."""

    def __init__(self, trusted: Sequence[str] = ()) -> None:
        self.trusted = [m.strip(".") for m in trusted if m.strip(".")]
        self.imports: set[str] = set()

    def render(self, text: str | None) -> tuple[str, bool]:
        """(the annotation for the stub, whether it was kept as the server wrote it)."""
        if text is None:
            return _ANY, True
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError:
            return _ANY, False
        needed: set[str] = set()
        body = _Qualify().visit(tree.body)
        if not self._resolvable(body, needed, in_literal=False):
            return _ANY, False
        self.imports |= needed
        return ast.unparse(body), True

    def _module_of(self, dotted: str) -> str | None:
        """The module to import for ``dotted`` (``datetime.datetime`` -> ``datetime``), if trusted."""
        for m in self.trusted:
            if dotted == m or dotted.startswith(m + "."):
                return m
        parts = dotted.split(".")
        if parts[0] not in sys.stdlib_module_names:
            return None
        # Which prefix is the module, found without running it (a server chooses these names): a
        # plain module has no submodules, and a package's own __init__ is all find_spec runs.
        try:
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        found = parts[0]
        for i in range(2, len(parts)):
            if spec.submodule_search_locations is None:
                break
            candidate = ".".join(parts[:i])
            try:
                spec = importlib.util.find_spec(candidate)
            except (ImportError, ValueError):
                break
            if spec is None:
                break
            found = candidate
        return found if len(parts) > 1 else None

    def _resolvable(self, node: ast.expr, needed: set[str], *, in_literal: bool) -> bool:
        if isinstance(node, ast.Constant):
            value = node.value
            return value is None or value is Ellipsis or (in_literal and not isinstance(value, bytes))
        if isinstance(node, ast.Name):
            return node.id in _BUILTIN_TYPES or node.id == "None"
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            module = self._module_of(dotted) if dotted else None
            if module is None:
                return False
            needed.add(module)
            return True
        if isinstance(node, ast.Subscript):
            literal = (_dotted(node.value) or "").endswith("Literal")
            return self._resolvable(node.value, needed, in_literal=False) and self._resolvable(
                node.slice, needed, in_literal=literal
            )
        if isinstance(node, ast.Tuple | ast.List):
            return all(self._resolvable(e, needed, in_literal=in_literal) for e in node.elts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self._resolvable(node.left, needed, in_literal=False) and self._resolvable(
                node.right, needed, in_literal=False
            )
        return False


class _Qualify(ast.NodeTransformer):
    """``Optional[int]`` -> ``typing.Optional[int]``: bare typing names, as signatures print them."""

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id in _TYPING_NAMES and node.id not in _BUILTIN_TYPES:
            return ast.copy_location(ast.Attribute(ast.Name("typing", ast.Load()), node.id, ast.Load()), node)
        return node


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


# -- signatures -------------------------------------------------------------------------------------


_KINDS = frozenset(
    ("positional_only", "positional_or_keyword", "var_positional", "keyword_only", "var_keyword")
)


def _identifier(name: object) -> bool:
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def _params(method: dict[str, Any]) -> list[_Param] | None:
    """A method's parameters: from ``params`` when the server sends them, else parsed from its
    ``signature`` text; None when neither says (``(...)``: any arguments)."""
    raw = method.get("params")
    if isinstance(raw, list):
        out = []
        for p in raw:
            if not isinstance(p, dict):
                return None
            name, annotation = p.get("name"), p.get("annotation")
            kind = p.get("kind", "positional_or_keyword")
            if not isinstance(name, str) or not _identifier(name) or kind not in _KINDS:
                return None  # what the server sent is never written into the stub unchecked
            ann = annotation if isinstance(annotation, str) else None
            out.append(_Param(name, kind, ann, p.get("default") is not None))
        return out
    text = method.get("signature")
    if not isinstance(text, str) or text.strip() in ("", "(...)"):
        return None
    try:
        fn = ast.parse(f"def _f{text}: pass").body[0]
    except SyntaxError:
        return None
    assert isinstance(fn, ast.FunctionDef)
    a = fn.args
    out = []
    positional = [*a.posonlyargs, *a.args]
    first_default = len(positional) - len(a.defaults)
    for i, arg in enumerate(positional):
        kind = "positional_only" if i < len(a.posonlyargs) else "positional_or_keyword"
        out.append(_Param(arg.arg, kind, _source(arg.annotation), i >= first_default))
    if a.vararg is not None:
        out.append(_Param(a.vararg.arg, "var_positional", _source(a.vararg.annotation), False))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        out.append(_Param(arg.arg, "keyword_only", _source(arg.annotation), default is not None))
    if a.kwarg is not None:
        out.append(_Param(a.kwarg.arg, "var_keyword", _source(a.kwarg.annotation), False))
    return out


def _source(node: ast.expr | None) -> str | None:
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value  # a quoted (postponed) annotation: its text
    return ast.unparse(node)


def _returns(method: dict[str, Any]) -> str | None:
    if "returns" in method:
        r = method.get("returns")
        return r if isinstance(r, str) else None
    text = method.get("signature")
    if isinstance(text, str) and "->" in text:
        try:
            fn = ast.parse(f"def _f{text}: pass").body[0]
        except SyntaxError:
            return None
        assert isinstance(fn, ast.FunctionDef)
        return _source(fn.returns)
    return None


# -- rendering --------------------------------------------------------------------------------------


def _class_base(service: str) -> str:
    words = [w for w in re.split(r"[^0-9A-Za-z]+", service) if w]
    base = "".join(w[:1].upper() + w[1:] for w in words) or "Service"
    if base[0].isdigit() or keyword.iskeyword(base):
        base = "Service" + base
    return base


def _tree(methods: Iterable[dict[str, Any]], skipped: list[str]) -> _Node:
    root = _Node()
    for m in methods:
        name = m.get("name")
        if not isinstance(name, str) or name.startswith("zcall."):
            continue
        parts = name.split(".")
        if not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
            skipped.append(name)
            continue
        node = root
        for part in parts[:-1]:
            node = node.children.setdefault(part, _Node())
        node.methods[parts[-1]] = m
    return root


def _doc(text: str, indent: str) -> list[str]:
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"').strip()
    lines = text.splitlines() or [""]
    if len(lines) == 1:
        return [f'{indent}"""{lines[0]}"""']
    return [f'{indent}"""{lines[0]}', *[f"{indent}{line}".rstrip() for line in lines[1:]], f'{indent}"""']


class _Renderer:
    def __init__(self, types: _Types) -> None:
        self.types = types
        self.classes: list[list[str]] = []
        self.names: set[str] = set()

    def unique(self, name: str) -> str:
        candidate, n = name, 2
        while candidate in self.names:
            candidate, n = f"{name}{n}", n + 1
        self.names.add(candidate)
        return candidate

    def signature(self, method: dict[str, Any], face: str) -> tuple[list[str], str, list[str]]:
        """The parameters (after ``self``), the return annotation for ``face``, and notes on annotations
        that became ``Any``."""
        notes: list[str] = []
        ret_text = _returns(method)
        ret, kept = self.types.render(ret_text)
        if not kept:
            notes.append(f"returns {ret_text} on the server (Any here)")
        params = _params(method)
        if params is not None and face == "future" and {p.name for p in params} & {"callback", "errback"}:
            notes.append("its parameter named callback or errback cannot pass through proxy_async")
            params = None
        if params is None:  # any arguments
            params = [
                _Param("args", "var_positional", None, False),
                _Param("kwargs", "var_keyword", None, False),
            ]
        parts: list[str] = []
        pos_only = star = False
        for p in params:
            ann, kept = self.types.render(p.annotation)
            if not kept:
                notes.append(f"{p.name}: {p.annotation} on the server (Any here)")
            if pos_only and p.kind != "positional_only":
                parts.append("/")
                pos_only = False
            if p.kind == "positional_only":
                pos_only = True
            elif p.kind == "var_positional":
                parts.append(f"*{p.name}: {ann}")
                star = True
                continue
            elif p.kind == "keyword_only" and not star:
                parts.append("*")
                star = True
            elif p.kind == "var_keyword":
                if face == "future":
                    parts += self._callbacks(ret, star)
                    star = True
                parts.append(f"**{p.name}: {ann}")
                continue
            parts.append(f"{p.name}: {ann}" + (" = ..." if p.has_default else ""))
        if pos_only:
            parts.append("/")
        if face == "future" and not any(p.kind == "var_keyword" for p in params):
            parts += self._callbacks(ret, star)
        if face == "future":
            ret = f"_futures.Future[{ret}]"
        return parts, ret, notes

    @staticmethod
    def _callbacks(ret: str, star: bool) -> list[str]:
        return [
            *([] if star else ["*"]),
            f"callback: _Callable[[{ret}], {_ANY}] | None = ...",
            f"errback: _Callable[[BaseException], {_ANY}] | None = ...",
        ]

    def method_lines(self, attr: str, method: dict[str, Any], face: str) -> list[str]:
        params, ret, notes = self.signature(method, face)
        taken = {p.lstrip("*").split(":")[0] for p in params}
        me = "self" if "self" not in taken else "_self"
        prefix = "async def" if face == "async" else "def"
        line = f"    {prefix} {attr}({', '.join([me, *params])}) -> {ret}:"
        if len(line) <= _WIDTH:
            lines = [line]
        else:  # one parameter a line, as black writes a long signature
            lines = [f"    {prefix} {attr}(", *[f"        {p}," for p in [me, *params]], f"    ) -> {ret}:"]
        name = method.get("name")
        remote = f"Remote method {name!r}: {name}{method.get('signature', '(...)')}"
        flags = [f for f in ("coroutine", "idempotent") if method.get(f)]
        if flags:
            remote += f" [{', '.join(flags)}]"
        remote += "".join(f"; {n}" for n in notes) + "."
        remote = "\n".join(textwrap.wrap(remote, _WIDTH - 12, break_on_hyphens=False, break_long_words=False))
        doc = str(method.get("docstring") or method.get("doc") or "").strip()
        lines += _doc(f"{doc}\n\n{remote}" if doc else remote, "        ")
        lines.append("        ...")
        return lines

    def protocol(self, cls: str, node: _Node, face: str, prefix_names: list[str], service: str) -> str:
        """Render ``cls`` for ``node`` (and its children first); returns the class name used."""
        cls = self.unique(cls)
        lines = [f"class {cls}(_Protocol):"]
        where = ".".join(prefix_names)
        kind = {"sync": "blocking", "async": "awaitable", "future": "future-returning"}[face]
        what = f"service {service!r}" + (f", names under {where + '.'!r}" if where else "")
        lines += _doc(f"The {kind} calls of {what}.", "    ")
        members: list[str] = []
        for attr in sorted(set(node.methods) | set(node.children)):
            if attr in node.children:
                child = node.children[attr]
                child_cls = self.protocol(
                    cls + attr[:1].upper() + attr[1:], child, face, [*prefix_names, attr], service
                )
                if attr in node.methods:  # both a method and a prefix: the child is callable too
                    self._callable(child_cls, node.methods[attr], face)
                members += ["", "    @property", f"    def {attr}(self) -> {child_cls}:", "        ..."]
            else:
                members += ["", *self.method_lines(attr, node.methods[attr], face)]
        if not members:
            members = ["", "    pass"]
        self.classes.append(lines + members)
        return cls

    def _callable(self, cls: str, method: dict[str, Any], face: str) -> None:
        for body in self.classes:
            if body[0].startswith(f"class {cls}("):
                body += ["", *self.method_lines("__call__", method, face)]
                return


def render_stubs(
    services: Sequence[ServiceListing],
    *,
    source: str = "",
    import_types: Sequence[str] = (),
    names: Sequence[str | None] = (),
) -> str:
    """The text of a stub module for ``services`` (``names`` overrides each service's class name)."""
    from ... import __version__

    for m in import_types:
        if not all(_identifier(part) for part in m.split(".")):
            raise ValueError(f"--import-types {m!r} is not a module name")
    types = _Types(import_types)
    r = _Renderer(types)
    exported: list[str] = []
    skipped: list[str] = []
    bases = []
    for i, svc in enumerate(services):
        base = (names[i] if i < len(names) else None) or _class_base(svc.name)
        tree = _tree(svc.methods, skipped)
        for face, prefix in (("sync", ""), ("async", "Async"), ("future", "Future")):
            exported.append(r.protocol(prefix + base, tree, face, [], svc.name))
        bases.append((base, svc))
    example = bases[0][0] if bases else "Service"
    about = "\n".join(
        [
            f"Typed interfaces of zcall services, written by `zcall stubs{' ' + source if source else ''}` "
            f"(zcall {__version__}) from",
            "what the servers report in zcall.methods. Regenerate it rather than edit it.",
            "",
            *[f"- {b}, Async{b}, Future{b}: service {s.name!r} at {s.endpoint or '?'}" for b, s in bases],
            "",
            "Type a proxy with typing.cast; mypy then checks every call made through it::",
            "",
            f"    api = cast({example}, zcall.SyncClient(endpoint).proxy)          # blocking",
            f"    aapi = cast(Async{example}, zcall.AsyncClient(endpoint).proxy)   # await aapi.method(...)",
            f"    fapi = cast(Future{example}, zcall.AsyncClient(endpoint).proxy_async)  # futures",
            "",
            "Importing this module runs no call and imports nothing but typing: the annotations are for",
            "type checkers only (the modules they name are imported under TYPE_CHECKING).",
        ]
    )
    header = [
        *_doc(about, ""),
        "",
        "from __future__ import annotations",
        "",
        "from typing import TYPE_CHECKING",
        "from typing import Protocol as _Protocol",
        "",
        "if TYPE_CHECKING:",
        *[
            f"    {line}"
            for line in sorted(
                ["import concurrent.futures as _futures", *[f"import {m}" for m in types.imports]],
                key=lambda line: line.split()[1],
            )
        ],
        "    from collections.abc import Callable as _Callable",
        "    from typing import Any as _Any",
        "",
        f"__all__ = {sorted(exported)!r}",
    ]
    if skipped:
        names = ", ".join(repr(n) for n in skipped)
        header += ["", f"# not Python identifiers, call them with client.call(NAME, ...): {names}"]
    body = []
    for cls in r.classes:
        body += ["", "", *cls]
    text = "\n".join(header + body) + "\n"
    compile(text, "<zcall stubs>", "exec")  # a stub that does not parse is a bug here, not the user's
    return text


# -- the command ------------------------------------------------------------------------------------


def cmd_stubs(ns: argparse.Namespace) -> int:
    from .calls import _client_security

    groups = [endpoints(text, ns.mesh) for text in ns.endpoint]
    if ns.name and len(ns.name) > len(groups):
        raise UsageError(f"{len(ns.name)} --name for {len(groups)} ENDPOINT(s): at most one per endpoint")
    for n in ns.name or ():
        if not _identifier(n):
            raise UsageError(f"--name {n!r} is not a Python class name")
    for m in ns.import_types:
        if not all(_identifier(part) for part in m.split(".")):
            raise UsageError(f"--import-types {m!r} is not a module name like myapp.models")
    security = _client_security(ns)

    def go() -> int:
        listings = [fetch_listing(eps, ns.timeout, security) for eps in groups]
        text = render_stubs(
            listings, source=" ".join(ns.endpoint), import_types=ns.import_types, names=ns.name or ()
        )
        if ns.output in (None, "-"):
            sys.stdout.write(text)
            sys.stdout.flush()
            return EXIT_OK
        directory = os.path.dirname(os.path.abspath(ns.output))
        fd, tmp = tempfile.mkstemp(prefix=".zcall-stubs.", suffix=".py", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, ns.output)
        counted = sum(
            1 for s in listings for m in s.methods if not str(m.get("name", "")).startswith("zcall.")
        )
        err(f"wrote {ns.output}: {', '.join(s.name for s in listings)} ({counted} methods)")
        return EXIT_OK

    return one_shot(go, where=[e for g in groups for e in g], call_timeout=ns.timeout, security=security)


def add_parsers(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    from .calls import _add_client_security

    p = sub.add_parser(
        "stubs",
        help="write a typed Python module (typing.Protocol per service) from what servers report",
        description=(
            "Ask each ENDPOINT (one service each; @NAME for a launched peer) for its methods and write a\n"
            "module with three typing.Protocol classes per service: NAME (blocking: SyncClient.proxy),\n"
            "AsyncNAME (AsyncClient.proxy) and FutureNAME (AsyncClient.proxy_async). Type a proxy with\n"
            "typing.cast(NAME, client.proxy) and mypy checks the calls. Annotations the stub cannot\n"
            "import become Any unless --import-types names their module."
        ),
        formatter_class=fmt,
    )
    p.add_argument("endpoint", nargs="+", metavar="ENDPOINT")
    p.add_argument("-o", "--output", metavar="FILE", default=None, help="write here (default: stdout)")
    p.add_argument(
        "--name", action="append", default=[], metavar="CLASS", help="class name per endpoint, in order"
    )
    p.add_argument(
        "--import-types",
        action="append",
        default=[],
        metavar="MODULE",
        help="keep annotations from MODULE (the stub imports it: it must be importable where you check)",
    )
    p.add_argument("--timeout", type=float, default=5.0, metavar="S")
    _add_client_security(p)
    add_mesh_option(p)
    p.set_defaults(func=cmd_stubs)
