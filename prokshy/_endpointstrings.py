# -*- test-case-name: tests.system.test_host_policy -*-
"""
Server endpoint strings, read once and the same way for the whole daemon
(L{prokshy.host.policy} and L{prokshy.host.tls}).

The tokens are Twisted's own, from the tokeniser C{serverFromString} uses
(C{twisted.internet.endpoints._tokenize}): parts are separated by C{:}; a
part is C{key=value} at its first C{=}, otherwise positional; a backslash
makes the next character literal, so C{\\:}, C{\\=} and C{\\\\} stand for
C{:}, C{=} and C{\\} (C{interface=\\:\\:1}, C{unix:/run/a\\=b.sock}).  The
first positional part is the endpoint type.

The schema of an endpoint type is a function's signature, as in Twisted's
own parsers (C{_parseTCP(factory, port, interface="", backlog=50)},
C{_TCP6ServerParser._parseServer(reactor, port, backlog=50,
interface="::")}): L{bind} binds a string's arguments to its parameters, so
what a string means, and which keys it may use, is decided by the
signature alone, with the same positional and keyword rules as Twisted.
A string that does not fit gets one line naming the key or the value at
fault.
"""

import difflib
import inspect

import attr
from twisted.internet.endpoints import _STRING, _tokenize, quoteStringArgument

__all__ = ["BoundArguments", "EndpointString", "EndpointStringError", "bind", "parse", "quote"]


class EndpointStringError(ValueError):
    """
    An endpoint string that cannot be read, or that does not fit a schema.
    The message is one line, without the string (callers add it).
    """


@attr.s(frozen=True)
class EndpointString:
    """
    An endpoint string split by Twisted's tokeniser.

    @ivar kind: the endpoint type, as written (Twisted matches C{tcp},
        C{unix} and C{ssl} by case, plugin types ignoring it).
    @ivar args: the other positional values, in order.
    @ivar kwargs: C{key: value}; of a key given more than once, the last
        (as Twisted does).
    @ivar repeated: the keys given more than once, in order.
    """

    kind = attr.ib()
    args = attr.ib(converter=tuple)
    kwargs = attr.ib()
    repeated = attr.ib(converter=tuple, default=())


def parse(description):
    """
    Split C{description} into its type and arguments, as C{serverFromString}
    does (the same result as C{twisted.internet.endpoints._parse}).

    @raise EndpointStringError: for a string ending in a lone backslash
        (which makes Twisted fail with C{RuntimeError}), or one that does
        not begin with its endpoint type, written plainly (no escape, no
        C{key=}): the type decides what a listener allows, so it must be
        read the same by everyone.
    """
    items = []
    current = []
    try:
        for token, value in _tokenize(description):
            if token is _STRING:
                current.append(value)
            elif value == ":":
                items.append(current)
                current = []
    except RuntimeError:
        # _tokenize calls next() after a final backslash (PEP 479).
        raise EndpointStringError("ends in a lone backslash (write \\\\ for a backslash)")
    items.append(current)
    args, kwargs, repeated = [], {}, []
    for item in items:
        if len(item) == 1:
            args.append(item[0])
        else:
            key, value = item
            if key in kwargs and key not in repeated:
                repeated.append(key)
            kwargs[key] = value
    kind = args[0] if args else None
    if not kind or description.partition(":")[0].lower() != kind.lower():
        raise EndpointStringError("does not begin with an endpoint type such as tcp: or unix:")
    return EndpointString(kind, args[1:], kwargs, repeated)


def quote(value):
    """
    Escape C{value} for any place in an endpoint string (key, value or
    positional): C{\\}, C{:} and C{=} get a backslash.  L{parse} gives
    C{value} back.
    """
    return quoteStringArgument(value).replace("=", "\\=")


def _names(parameters):
    return ", ".join(p.name for p in parameters)


def _suggest(key, names):
    """
    A hint for the unknown C{key}: the closest of C{names}, or, for a key
    that is no name at all (a path), how to write C{=} in a value.
    """
    if not key.isidentifier():
        return " (write a '=' inside a value as \\=)"
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    close = close or [name for name in names if name.lower() == key.lower()]
    return " (did you mean %r?)" % (close[0],) if close else ""


class BoundArguments(dict):
    """
    What L{bind} returns: every parameter's value (given or default), and
    C{given}, the set of parameter names the string itself gives.
    """

    given = frozenset()


def bind(schema, endpoint, leading=0, allowRepeated=True, label=None):
    """
    Bind the arguments of C{endpoint} (an L{EndpointString}) to the
    parameters of C{schema}, a parser function whose first C{leading}
    parameters are not in the string (Twisted's leftover C{factory}, or a
    C{reactor}).

    @param allowRepeated: whether a key may be given twice, the last
        winning (as Twisted allows).
    @param label: what the messages call the schema (default: the
        endpoint type, as C{tcp:}).
    @return: a L{BoundArguments}: every parameter after the leading ones
        with the value the string gives (positionally or by key) or its
        default, and C{given}, the names the string gives.
    @raise EndpointStringError: naming a key the signature does not have
        (with the closest one it does), a key given twice, a value without
        a key beyond the positional parameters, or a missing required one.
    """
    if label is None:
        label = endpoint.kind.lower() + ":"
    signature = inspect.signature(schema)
    parameters = list(signature.parameters.values())[leading:]
    positional = [
        p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    byName = {p.name: p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key in endpoint.kwargs:
        if key not in byName:
            raise EndpointStringError(
                "unsupported key %r%s; %s takes %s" % (key, _suggest(key, byName), label, _names(parameters))
            )
    if endpoint.repeated and not allowRepeated:
        raise EndpointStringError("%s given twice" % (endpoint.repeated[0],))
    # An empty value without a key is nearly always a ':' left unescaped
    # (interface=::1 is interface='', '', '1').
    colons = " (write a ':' inside a value as \\:)" if "" in endpoint.args else ""
    if len(endpoint.args) > len(positional):
        raise EndpointStringError(
            "%d value(s) without a key=, but %s takes only %s that way%s"
            % (len(endpoint.args), label, _names(positional) or "none", colons or " (give the others as key=value)")
        )
    for parameter, value in zip(positional, endpoint.args):
        if parameter.name in endpoint.kwargs:
            raise EndpointStringError(
                "%s given twice (%r, and %s=%r)%s"
                % (parameter.name, value, parameter.name, endpoint.kwargs[parameter.name], colons)
            )
    given = dict(zip((p.name for p in positional), endpoint.args))
    given.update(endpoint.kwargs)
    for parameter in parameters:
        if parameter.default is parameter.empty and parameter.name not in given:
            raise EndpointStringError("no %s given" % (parameter.name,))
    result = BoundArguments((p.name, given.get(p.name, p.default)) for p in parameters)
    result.given = frozenset(given)
    return result
