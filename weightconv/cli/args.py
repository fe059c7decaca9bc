"""Argument groups the verbs share: the global switches, the format options (built from the
registry), the mapping options, and the translation of library option names into flags."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from weightconv import formats
from weightconv._util.text import parse_fc_input, parse_positive_int, parse_shape, parse_size
from weightconv.errors import EXIT_BAD_INPUT, UsageError
from weightconv.formats import Format
from weightconv.formats.base import Options, OptionSpec
from weightconv.mapping import CHANNEL_ORDERS, NAME_SCHEMES, MapFile, Mapping

#: Library option names that are spelled differently on the command line.
_FLAG_OF = {
    "force": "--force",
    "src_format": "--from",
    "dst_format": "--to",
    "map_file": "--map",
    "fc_inputs": "--fc-input",
    "only": "--only",
    "skip": "--skip",
    "against": "--against",
    "card": "--card",
    "images": "--image",
    "channel_order": "--channels",
}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and a hint, exit code 2, and whose
    flags that take one value refuse a second (argparse keeps the last without a word)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)
        self.given: set[str] = set()

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        self.given = set()
        return super().parse_known_args(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise CommandLineError(self.prog, message)


class _StoreOnce(argparse._StoreAction):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given = getattr(parser, "given", None)
        if option_string is not None and given is not None:
            if self.dest in given:
                several = ", several joined by commas" if "=" in str(self.metavar or "") else ""
                raise argparse.ArgumentError(self, f"given twice; it takes one value{several}")
            given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class Verbs:
    """The verbs' subparsers, built in full only for the verb being run (`wanted`): every
    other verb is listed by name and help, its arguments never built. Building all of them
    costs more than many a command's whole work."""

    def __init__(self, subparsers: Any, wanted: str | None) -> None:
        self._subparsers = subparsers
        self._wanted = wanted
        self._built = False
        self._listed: list[tuple[str, str | None]] = []

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self._wanted is None or name == self._wanted:
            self._built = True
            return self._subparsers.add_parser(name, **kwargs)
        self._listed.append((name, kwargs.get("help")))
        return _Unbuilt()

    def finish(self) -> None:
        """List the verbs not built, when the one wanted is not among those built: argparse
        then names the choices in its error. A verb that is built needs no others."""
        if self._built:
            return
        for name, help_text in self._listed:
            self._subparsers.add_parser(name, help=help_text, add_help=False)


class _Unbuilt:
    """Takes a verb's argument definitions and drops them (the verb is not being run)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


class CommandLineError(Exception):
    """A usage error argparse found: rendered by `main` as one line and a hint (and, with
    --json, as a JSON error document)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message

    def render(self) -> None:
        print(f"{self.prog}: error: {self.message}", file=sys.stderr)
        print(
            f"hint: see `{self.prog} --help` for the usage, options and examples", file=sys.stderr
        )


def arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser that raises ValueError."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value").removeprefix("parse_")
    return convert


positive_int = arg_type(parse_positive_int)
shape = arg_type(parse_shape)
size = arg_type(parse_size)
fc_input = arg_type(parse_fc_input)


def global_switches(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--json, --quiet and --debug, taken before or after the verb."""
    default = False if top else argparse.SUPPRESS
    parser.add_argument(
        "--json",
        action="store_true",
        default=default,
        help="print one machine-readable JSON document on stdout",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="no progress bar and no notes on stderr",
    )
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show the traceback of an error"
    )


def examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


# -- format options from the registry ---------------------------------------------------------


def _option_specs(kind: str) -> dict[str, tuple[OptionSpec, list[Format]]]:
    """Flag -> (its spec, the formats whose reader or writer takes it)."""
    table: dict[str, tuple[OptionSpec, list[Format]]] = {}
    for fmt in formats.FORMATS:
        options = fmt.read_options if kind == "read" else fmt.write_options
        for spec in options.specs() if options is not None else []:
            if spec.flag in table:
                table[spec.flag][1].append(fmt)
            else:
                table[spec.flag] = (spec, [fmt])
    return table


def add_format_options(
    parser: argparse.ArgumentParser, kind: str, only_formats: Sequence[str] | None = None
) -> None:
    """Each reader's or writer's options as flags, grouped by format; a flag not given stays
    out of the namespace, so that what was given can be routed (or refused)."""
    if isinstance(parser, _Unbuilt):
        return
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag, (spec, owners) in _option_specs(kind).items():
        names = [f.name for f in owners]
        help_text = _help_of(flag, spec, owners, kind) + (
            ""
            if spec.default in (None, False, "") or spec.is_switch
            else f" (default {spec.default})"
        )
        if only_formats is not None and not set(names) & set(only_formats):
            # taken, so that it is refused by name, but not shown for this verb
            group: Any = parser
            help_text = argparse.SUPPRESS
        else:
            title = f"{'/'.join(names)} {'input' if kind == 'read' else 'output'} options"
            group = groups.setdefault(title, parser.add_argument_group(title))
        dest = f"{kind}:{spec.name}"
        if spec.is_switch:
            group.add_argument(
                flag,
                dest=dest,
                action="store_false" if spec.default else "store_true",
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        kwargs: dict[str, Any] = {
            "dest": dest,
            "default": argparse.SUPPRESS,
            "help": help_text,
            "metavar": spec.metavar,
        }
        if spec.choices:
            kwargs["choices"] = spec.choices
            kwargs.pop("metavar")
        elif spec.parse is not None:
            kwargs["type"] = arg_type(spec.parse)
        elif spec.annotation is int or spec.annotation == (int | None):
            kwargs["type"] = int
        group.add_argument(flag, **kwargs)


def _help_of(flag: str, spec: OptionSpec, owners: list[Format], kind: str) -> str:
    """The help of a flag; of each format in turn when the formats sharing it say different
    things (``--model``: a Keras config, a PyTorch or an ONNX template)."""
    helps: dict[str, list[str]] = {}
    for fmt in owners:
        options = fmt.read_options if kind == "read" else fmt.write_options
        for own in options.specs() if options is not None else []:
            if own.flag == flag:
                helps.setdefault(own.help, []).append(fmt.name)
    if len(helps) <= 1:
        return spec.help
    return "; ".join(f"{'/'.join(names)}: {text}" for text, names in helps.items())


def given_options(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    prefix = f"{kind}:"
    return {
        key[len(prefix) :]: value for key, value in vars(args).items() if key.startswith(prefix)
    }


def options_for(
    fmt: Format, options_class: type[Options] | None, given: dict[str, Any], kind: str
) -> dict[str, Any]:
    """The given flags that `fmt`'s reader or writer takes; any other is refused."""
    takes = set(options_class.names()) if options_class is not None else set()
    for name in given:
        if name not in takes:
            flag = _flag_of(name)
            owners = [f.name for f in _option_specs(kind)[flag][1]]
            side = "input" if kind == "read" else "output"
            raise UsageError(
                f"{flag} applies to {'/'.join(owners)} {side}, not to "
                f"{fmt.name} {side} ({fmt.title})"
            )
    return given


def _flag_of(name: str) -> str:
    for kind in ("read", "write"):
        for flag, (spec, _) in _option_specs(kind).items():
            if spec.name == name:
                return flag
    return _FLAG_OF.get(name, "--" + name.replace("_", "-"))


def translate(message: str) -> str:
    """A library message with option names (``force=True``, ``option 'shards'``) as flags."""
    names = {spec.name for kind in ("read", "write") for spec, _ in _option_specs(kind).values()}
    names |= set(Mapping.option_names()) | set(_FLAG_OF)
    pattern = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    message = re.sub(rf"\b({pattern})=True\b", lambda m: _mapping_flag(m.group(1)), message)
    message = re.sub(rf"\boption '({pattern})'", lambda m: _mapping_flag(m.group(1)), message)
    message = re.sub(
        rf"\b({pattern})=([^\s),;:]?)",
        lambda m: _mapping_flag(m.group(1)) + (" " + m.group(2) if m.group(2) else ""),
        message,
    )
    return message


def _mapping_flag(name: str) -> str:
    if name in _FLAG_OF:
        return _FLAG_OF[name]
    return _flag_of(name)


# -- selection and mapping --------------------------------------------------------------------


def add_selection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("selection")
    group.add_argument(
        "--only",
        metavar="GLOB",
        action="append",
        default=[],
        help="keep only layers (or tensors) whose name matches; repeatable",
    )
    group.add_argument(
        "--skip",
        metavar="GLOB",
        action="append",
        default=[],
        help="leave out layers (or tensors) whose name matches, e.g. fc8; "
        "repeatable; one that matches nothing is an error",
    )


def add_mapping(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mapping")
    group.add_argument(
        "--names",
        choices=NAME_SCHEMES,
        default="keep",
        help="output tensor names: keep the source's (default), tf1 "
        "(conv1/weights), slim (NET/conv1/conv1_1/weights), keras "
        "(conv1/kernel) or caffe (conv1/weights, scopes dropped)",
    )
    group.add_argument(
        "--net",
        metavar="NAME",
        default="",
        help="the net scope of slim names, e.g. vgg_16 or alexnet_v2",
    )
    group.add_argument(
        "--scope",
        metavar="SCOPE",
        default="",
        help="put every output tensor under this scope, e.g. my/",
    )
    group.add_argument(
        "--fc-as-conv",
        action="store_true",
        help="fully-connected layers (matching --fc-pattern) as slim's "
        "convolutions: fc6 (25088, 4096) -> (7, 7, 512, 4096)",
    )
    group.add_argument(
        "--fc-as-dense",
        action="store_true",
        help="fc-as-conv kernels (matching --fc-pattern) back to dense kernels",
    )
    group.add_argument(
        "--fc-pattern",
        metavar="GLOB",
        default="fc*",
        help="the layers --fc-as-conv/--fc-as-dense apply to (default fc*)",
    )
    group.add_argument(
        "--fc-input",
        metavar="NAME=H,W,C",
        action="append",
        default=[],
        type=fc_input,
        help="the input size of a fully-connected layer when the source does "
        "not record it, e.g. fc6=7,7,512",
    )
    group.add_argument(
        "--input-channels",
        choices=CHANNEL_ORDERS,
        default=None,
        help="channel order the output's first convolution should expect; "
        "its input channels are swapped if the source's differs",
    )
    group.add_argument(
        "--source-channels",
        choices=CHANNEL_ORDERS,
        default=None,
        help="the source's channel order when the file does not record it (Caffe models are BGR)",
    )
    group.add_argument(
        "--split-groups",
        action="store_true",
        help="grouped convolutions as one kernel per group (conv2_group0, ...)",
    )
    group.add_argument(
        "--merge-groups",
        action="store_true",
        help="merge NAME_group0, NAME_group1, ... back into one grouped kernel",
    )
    group.add_argument(
        "--map",
        dest="map_file",
        metavar="FILE",
        type=Path,
        help="JSON or TOML map file: regex renames, skips, per-tensor reshape/transpose/flip_axis",
    )


def mapping_of(args: argparse.Namespace) -> Mapping:
    return Mapping(
        names=args.names,
        net=args.net,
        scope=args.scope,
        fc_as_conv=args.fc_as_conv,
        fc_as_dense=args.fc_as_dense,
        fc_pattern=args.fc_pattern,
        fc_inputs=dict(args.fc_input),
        input_channels=args.input_channels,
        source_channels=args.source_channels,
        split_groups=args.split_groups,
        merge_groups=args.merge_groups,
        map_file=MapFile.load(args.map_file) if args.map_file else None,
    )


def add_input_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="src_format",
        metavar="FORMAT",
        choices=[f.name for f in formats.FORMATS],
        help="input format (default: detected from the content)",
    )


def mb(count: int | None) -> str:
    return f"{(count or 0) / 1e6:,.1f} MB"


def listed(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def shape_text(shape: Sequence[Any]) -> str:
    if shape and isinstance(shape[0], list):
        return " + ".join(shape_text(part) for part in shape)
    return "(" + ", ".join(map(str, shape)) + ")"
