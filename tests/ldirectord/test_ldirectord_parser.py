"""Unit tests, directive family by directive family."""

from __future__ import annotations

import pytest

from lvs_events.domain.config import Family, Forwarding, Protocol
from lvs_events.ldirectord import (
    MAX_RANGE,
    ConfigError,
    ConfigWarning,
    StaticResolver,
    format_config,
    parse_file,
    parse_text,
)
from lvs_events.ldirectord.resolve import numeric_host

from .corpus import require_corpus, shared_dir

R = StaticResolver(
    hosts={
        "web1.example": "192.0.2.1",
        "web3.example": "192.0.2.3",
        "vip.example": "203.0.113.10",
        "v6.example": {Family.INET6: "2001:db8::10"},
    }
)


def p(text: str, strict: bool = False, warnings: list[ConfigWarning] | None = None):  # type: ignore[no-untyped-def]
    return parse_text(text, "t.cf", resolver=R, strict=strict, warnings=warnings)


def refuse(text: str, strict: bool = False) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        p(text, strict)
    return info.value


# -- globals ---------------------------------------------------------------------------------


def test_empty_file_is_the_default_config() -> None:
    c = p("")
    assert c.virtuals == ()
    assert c.globals.checktimeout == 5.0
    assert c.globals.negotiatetimeout == 30.0
    assert c.source == "t.cf"


def test_global_numbers_take_the_first_digits_and_trailing_comments_pass() -> None:
    c = p("checktimeout=3   # three seconds\ncheckinterval = 7\nfailurecount=2\n")
    assert c.globals.checktimeout == 3.0
    assert c.globals.negotiatetimeout == 3.0  # the two default to each other
    assert c.globals.checkinterval == 7.0
    assert c.globals.failurecount == 2


def test_negotiatetimeout_defaults_checktimeout() -> None:
    c = p("negotiatetimeout=12\n")
    assert (c.globals.checktimeout, c.globals.negotiatetimeout) == (12.0, 12.0)


@pytest.mark.parametrize("text", ["checktimeout=0\n", "checktimeout=abc\n", "checkinterval=0\n"])
def test_zero_or_missing_numbers_are_refused(text: str) -> None:
    assert refuse(text).line == 1


def test_yes_no_with_trailing_comment_is_refused_with_a_hint() -> None:
    err = refuse("autoreload=yes\nquiescent=no   # remove\n")
    assert (err.line, err.column) == (2, 11)
    assert err.upstream == "quiescent must be 'yes' or 'no'"
    assert err.hint is not None
    assert "trailing comment" in err.hint
    assert str(err).startswith("t.cf:2:11: quiescent must be 'yes' or 'no' (found ")
    assert " hint: " in str(err)


def test_quoted_only_globals() -> None:
    c = p('logfile="local0"\ncallback="/usr/local/sbin/sync"  # x\n')
    assert c.globals.logfile == "local0"
    assert c.globals.callback == "/usr/local/sbin/sync"
    err = refuse("logfile=/var/log/ld.log\n")
    assert err.upstream == "Unknown command logfile=/var/log/ld.log"
    assert err.hint is not None
    assert "double quotes" in err.hint


def test_callback_is_accepted_with_a_warning() -> None:
    warnings: list[ConfigWarning] = []
    p('callback="/x"\n', warnings=warnings)
    assert any("callback" in w.message for w in warnings)


def test_misc_globals() -> None:
    c = p(
        "fork=yes\nsupervised\nreaddquiescent=yes\ncleanstop=no\nmaintenancedir=/var/maint\n"
        'emailalert="a@example.com"\nemailalertfreq=60x\nemailalertstatus=starting, running\n'
        "emailalertfrom=ld@example.com\nsmtp=mail.example.com junk\nexecute=other.cf\nexecute=other.cf\n"
        "fallbackcommand=/bin/fb start\n"
    )
    g = c.globals
    assert g.fork
    assert g.supervised
    assert g.readdquiescent
    assert not g.cleanstop
    assert g.maintenancedir == "/var/maint"
    assert g.emailalert == "a@example.com"
    assert g.emailalertfreq == 60
    assert g.emailalertstatus == ("starting", "running")
    assert g.emailalertfrom == "ld@example.com"
    assert g.smtp == "mail.example.com"
    assert g.execute == ("other.cf",)
    assert g.fallbackcommand == "/bin/fb start"


@pytest.mark.parametrize(
    ("text", "upstream"),
    [
        ("emailalertstatus=all,none\n", 'invalid email alert status: "all" specified with "none"'),
        ("emailalertstatus=bogus\n", 'invalid email alert status at: "bogus"'),
        ('emailalert=""\n', "no email address specified"),
        ("supervised=maybe\n", "supervised must be 'yes' or 'no'"),
    ],
)
def test_global_value_errors(text: str, upstream: str) -> None:
    assert refuse(text).upstream == upstream


def test_global_fallback() -> None:
    c = p("fallback=127.0.0.1:80\nfallback6=[::1]:http masq\n")
    assert c.globals.fallback is not None
    assert (c.globals.fallback.address, c.globals.fallback.port) == ("127.0.0.1", 80)
    assert c.globals.fallback.forwarding is Forwarding.GATE
    assert c.globals.fallback6 is not None
    assert (c.globals.fallback6.address, c.globals.fallback6.port) == ("::1", 80)
    assert c.globals.fallback6.forwarding is Forwarding.MASQ


def test_global_fallback_with_trailing_comment_reads_the_comment_as_method() -> None:
    err = refuse("fallback=127.0.0.1:80    #sorry server\n")
    assert err.upstream == "forward method must be gate, masq or ipip"
    assert err.hint is not None
    assert "trailing comment" in err.hint


@pytest.mark.parametrize(
    ("text", "upstream"),
    [
        ("connecttimeout=5\n", "connecttimeout directive deprecated in favour of negotiatetimeout"),
        ("timeout=5\n", "timeout directive deprecated in favour of checktimeout and negotiatetimeout"),
    ],
)
def test_deprecated_globals_are_refused(text: str, upstream: str) -> None:
    err = refuse(text)
    assert (err.line, err.upstream) == (1, upstream)


def test_checkcount_is_deprecated_but_accepted() -> None:
    warnings: list[ConfigWarning] = []
    c = p("checkcount=3\n", warnings=warnings)
    assert c.globals.checkcount == 3
    assert any("deprecated" in w.message for w in warnings)


def test_virtual_only_directive_at_global_level() -> None:
    err = refuse("scheduler=rr\n")
    assert err.hint is not None
    assert "virtual block" in err.hint


# -- blocks: indentation, comments, how a block ends ------------------------------------------

BLOCK = "virtual=192.0.2.10:80\n\treal=192.0.2.1:80 gate\n"


def test_tab_or_four_spaces_indent_a_block_line() -> None:
    c = p(
        "virtual=192.0.2.10:80\n\treal=192.0.2.1:80 gate\n"
        "    real=192.0.2.2:80 gate\n  \treal=192.0.2.3:80 gate\n"
    )
    assert [r.address for r in c.virtuals[0].reals] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


def test_three_spaces_end_the_block_and_are_then_unknown() -> None:
    err = refuse(BLOCK + "   scheduler=rr\n")
    assert err.line == 3
    assert err.hint is not None
    assert "not inside a virtual block" in err.hint


def test_blank_line_ends_the_block() -> None:
    err = refuse(BLOCK + "\n    scheduler=rr\n")
    assert err.line == 4


def test_comment_lines_do_not_end_a_block() -> None:
    c = p(BLOCK + "# a comment at column 1\n    scheduler=rr\n")
    assert c.virtuals[0].scheduler == "rr"


def test_inline_comments_are_cut_in_a_block() -> None:
    c = p(BLOCK + '    scheduler=rr # round robin\n    request="a#b"\n'.replace('    request="a#b"\n', ""))
    assert c.virtuals[0].scheduler == "rr"
    err = refuse(BLOCK + '    request="a#b"\n')  # ldirectord cuts at the '#', quotes or not
    assert err.line == 3


def test_line_of_only_spaces_in_a_block_is_unknown() -> None:
    assert refuse(BLOCK + "      \n").line == 3


def test_global_directive_inside_a_block() -> None:
    err = refuse(BLOCK + "    autoreload=yes\n")
    assert err.line == 3
    assert err.hint is not None
    assert "global directive" in err.hint


def test_crlf_line_endings_keep_the_carriage_return() -> None:
    c = p("checktimeout=3\r\nvirtual=192.0.2.10:80\r\n    real=192.0.2.1:80 gate\r\n")
    assert c.virtuals[0].reals[0].address == "192.0.2.1"
    assert refuse("autoreload=yes\r\n").line == 1


# -- virtual= --------------------------------------------------------------------------------


def test_virtual_by_address_name_and_service() -> None:
    c = p("virtual=vip.example:www\n    real=web1.example:http gate\n")
    v = c.virtuals[0]
    assert (v.address, v.port, v.protocol) == ("203.0.113.10", 80, Protocol.TCP)
    assert v.check.service == "http"
    assert v.reals[0].address == "192.0.2.1"


@pytest.mark.parametrize(("port", "service"), [(21, "ftp"), (25, "smtp"), (80, "http"), (443, "https"),
                                               (3306, "mysql"), (5060, "sip"), (8080, "none")])  # fmt: skip
def test_service_defaults_by_port(port: int, service: str) -> None:
    assert p(f"virtual=192.0.2.10:{port}\n").virtuals[0].check.service == service


def test_port_53_defaults_to_udp() -> None:
    assert p("virtual=192.0.2.10:53\n").virtuals[0].protocol is Protocol.UDP
    assert p("virtual=192.0.2.10:domain\n").virtuals[0].protocol is Protocol.UDP
    assert p("virtual=192.0.2.10:53\n    protocol=tcp\n").virtuals[0].protocol is Protocol.TCP


def test_fwmark_virtual() -> None:
    c = p("virtual=5\n    real=192.0.2.1 gate\n    service=http\n")
    v = c.virtuals[0]
    assert (v.protocol, v.fwmark, v.address, v.port) == (Protocol.FWM, 5, None, 0)
    assert v.reals[0].port == 0
    assert v.key == "FWM 5"
    assert refuse("virtual=5\n    protocol=tcp\n").line == 2


def test_virtual_address_without_port() -> None:
    err = refuse("virtual=10.0.0.1\n    real=192.0.2.1:80 gate\n")
    assert err.line == 1
    assert err.hint is not None
    assert "firewall mark" in err.hint
    assert p("virtual=10.0.0.1\n    real=192.0.2.1:80 gate\n", strict=True).virtuals[0].fwmark == 10


def test_virtual6_real6_fallback6() -> None:
    c = p(
        "virtual6=[2001:db8::1]:80\n    real6=[2001:db8::2]:80 masq 3\n"
        "    fallback6=[::1]:80\n    netmask=64\n"
    )
    v = c.virtuals[0]
    assert (v.family, v.address, v.port) == (Family.INET6, "2001:db8::1", 80)
    assert v.reals[0].address == "2001:db8::2"
    assert v.reals[0].weight == 3
    assert v.fallback is not None
    assert v.fallback.address == "::1"
    assert v.netmask == "64"
    assert v.key == "TCP [2001:db8::1]:80"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("virtual=[2001:db8::1]:80\n", 1),
        ("virtual6=[2001:db8::1]:80\n    real=192.0.2.1:80 gate\n", 2),
        ("virtual=192.0.2.1:80\n    real6=[::1]:80 gate\n", 2),
        ("virtual6=[2001:db8::1]:80\n    fallback=127.0.0.1:80\n", 2),
        ("virtual6=[2001:db8::1]:80\n    netmask=255.255.255.0\n", 2),
        ("virtual6=[2001:db8::1]:80\n    real6=[2001:db8::2]->[2001:db8::3]:80 gate\n", 2),
        ("virtual6=[1::2::3]:80\n", 1),
        ("virtual=nowhere.example:80\n", 1),
        ("virtual=192.0.2.1:65536\n", 1),
        ("virtual=*:80\n", 1),
    ],
)
def test_virtual_errors(text: str, line: int) -> None:
    assert refuse(text).line == line


def test_duplicate_virtual_is_reported_at_the_line_ending_the_second_block() -> None:
    text = (
        "virtual=192.0.2.10:80\n    real=192.0.2.1:80 gate\n\n"
        "virtual=192.0.2.10:http\n    real=192.0.2.2:80 gate\n\n"
    )
    err = refuse(text)
    assert err.line == 6
    assert err.upstream == "duplicate virtual server"


def test_virtual_on_the_last_line() -> None:
    text = "virtual=192.0.2.10:80\n    real=192.0.2.1:80 gate\n\nvirtual=192.0.2.11:80"
    assert len(p(text).virtuals) == 2
    err = refuse(text, strict=True)  # ldirectord reads that last line twice
    assert (err.line, err.upstream) == (4, "duplicate virtual server")


# -- real= -----------------------------------------------------------------------------------


def test_real_flags() -> None:
    c = p(
        'virtual=192.0.2.10:80\n    real=192.0.2.1:80 masq 5 "/health", "OK" l:10 u:20\n'
        "    real=192.0.2.2 ipip\n"
    )
    r1, r2 = c.virtuals[0].reals
    assert (r1.forwarding, r1.weight, r1.request, r1.receive) == (Forwarding.MASQ, 5, "/health", "OK")
    assert (r1.lower_threshold, r1.upper_threshold) == (10, 20)
    assert (r2.forwarding, r2.weight, r2.port) == (Forwarding.IPIP, 1, 0)


def test_real_request_gets_a_leading_slash() -> None:
    c = p('virtual=192.0.2.10:80\n    real=192.0.2.1:80 gate 1 "health" "OK"\n')
    assert c.virtuals[0].reals[0].request == "/health"


def test_real_range_is_expanded() -> None:
    c = p("virtual=192.0.2.10:80\n    real=192.0.2.1->192.0.2.4:http gate 2\n")
    assert [r.address for r in c.virtuals[0].reals] == [f"192.0.2.{i}" for i in range(1, 5)]
    assert all(r.weight == 2 and r.port == 80 for r in c.virtuals[0].reals)


def test_real_range_by_names() -> None:
    c = p("virtual=192.0.2.10:80\n    real=web1.example->web3.example:80 gate\n")
    assert len(c.virtuals[0].reals) == 3


def test_real_range_across_a_digit_count_boundary() -> None:
    text = "virtual=192.0.2.10:80\n    real=0.0.0.9->0.0.0.11:80 gate\n"
    assert len(p(text).virtuals[0].reals) == 3
    assert len(p(text, strict=True).virtuals[0].reals) == 0  # ldirectord compares "9" le "11" as text


def test_real_range_limits() -> None:
    assert refuse("virtual=192.0.2.10:80\n    real=192.0.2.9->192.0.2.1:80 gate\n").line == 2
    big = f"virtual=192.0.2.10:80\n    real=10.0.0.0->10.{(MAX_RANGE >> 16) + 1}.0.0:80 gate\n"
    assert refuse(big).line == 2


@pytest.mark.parametrize(
    ("flags", "upstream"),
    [
        ("", "invalid address for real server (wrong format)"),
        (" route", "forward method must be gate, masq or ipip"),
        (" gate 1 extra", 'Invalid real server line, around " extra"'),
    ],
)
def test_real_errors(flags: str, upstream: str) -> None:
    err = refuse(f"virtual=192.0.2.10:80\n    real=192.0.2.1:80{flags}\n")
    assert (err.line, err.upstream) == (2, upstream)


def test_real_errors_come_after_the_block_is_read() -> None:
    # ldirectord resolves real servers once the block is complete: a later syntax error wins
    err = refuse("virtual=192.0.2.10:80\n    real=192.0.2.1:80 route\n    scheduler=RR\n")
    assert err.line == 3


def test_unresolvable_real_host() -> None:
    err = refuse("virtual=192.0.2.10:80\n    real=db.nowhere:80 gate\n")
    assert err.upstream == "invalid address (db.nowhere) for real server (could not resolve host)"


# -- check and service directives ------------------------------------------------------------


def test_check_directives() -> None:
    c = p(
        "virtual=192.0.2.10:3306\n    real=192.0.2.1:3306 gate\n    checktype=negotiate\n"
        '    login="u"\n    passwd="p"\n    database="db"\n    request="SELECT 1"\n    receive="1"\n'
        "    checkport=3307\n    checktimeout=4\n    negotiatetimeout=9\n    failurecount=3\n"
        '    checkinterval=20\n    httpmethod=head\n    virtualhost="www.example"\n'
        '    checkcommand="/bin/check arg"\n    cleanstop=no\n    secret="s"\n'
    )
    k = c.virtuals[0].check
    assert k.service == "mysql"
    assert (k.login, k.passwd, k.database, k.secret) == ("u", "p", "db", "s")
    assert (k.request, k.receive) == ("/SELECT 1", "1")
    assert (k.checkport, k.checktimeout, k.negotiatetimeout, k.failurecount) == (3307, 4.0, 9.0, 3)
    assert (k.checkinterval, k.httpmethod, k.virtualhost) == (20.0, "HEAD", "www.example")
    assert (k.checkcommand, k.cleanstop) == ("/bin/check arg", False)


def test_checkinterval_in_a_block_warns_without_fork() -> None:
    warnings: list[ConfigWarning] = []
    p("virtual=192.0.2.10:80\n    checkinterval=5\n", warnings=warnings)
    assert any("fork=no" in w.message for w in warnings)


def test_checktype_number_is_combined() -> None:
    assert p("virtual=192.0.2.10:80\n    checktype=5\n").virtuals[0].check.checktype == "5"


def test_service_ftp_defaults_login() -> None:
    assert p("virtual=192.0.2.10:2121\n    service=ftp\n").virtuals[0].check.login == "anonymous"


@pytest.mark.parametrize(
    "line",
    [
        "checktype=tcp", "service=pingpong", "scheduler=RR", "checkport=70000", "httpmethod=POST",
        "protocol=sctp", "ops=maybe", "quiescent=no ", "netmask=255.255.255.0 x", 'request=""',
        "request=/unquoted", "connecttimeout=5", "checktimeout=0", "persistent=x", "schedflags=",
        "readdquiescent=yes", "monitorfile=",
    ],
)  # fmt: skip
def test_block_value_errors(line: str) -> None:
    err = refuse(f"virtual=192.0.2.10:80\n    {line}\n")
    assert err.line == 2, str(err)


def test_persistence_and_scheduling() -> None:
    c = p("virtual=192.0.2.10:53\n    persistent=600\n    netmask=255.255.255.0\n    ops=yes\n"
          "    schedflags=sh-fallback,sh-port\n    scheduler=sh\n")  # fmt: skip
    v = c.virtuals[0]
    assert (v.persistent, v.netmask, v.ops, v.scheduler) == (600, "255.255.255.0", True, "sh")
    assert v.schedflags == ("sh-fallback", "sh-port")


def test_per_virtual_notifications() -> None:
    c = p('virtual=192.0.2.10:80\n    emailalert="ops@example.com"\n    emailalertfreq=300\n'
          "    emailalertstatus=none\n    smtp=mail.example\n    monitorfile=\"/var/log/mon\"\n"
          "    servicename=Web Site\n    comment=front end  \n    quiescent=yes\n"
          '    fallbackcommand="/bin/fb"\n    fallback=127.0.0.1 masq\n    load="cpu"\n')  # fmt: skip
    v = c.virtuals[0]
    assert (v.emailalert, v.emailalertfreq, v.emailalertstatus) == ("ops@example.com", 300, ("none",))
    assert (v.smtp, v.monitorfile, v.servicename, v.comment) == ("mail.example", "/var/log/mon", "Web Site",
                                                                  "front end  ")  # fmt: skip
    assert v.quiescent is True
    assert v.fallbackcommand == "/bin/fb"
    assert v.fallback is not None
    assert (v.fallback.port, v.fallback.forwarding) == (80, Forwarding.MASQ)


# -- resolver, files, printer -----------------------------------------------------------------


def test_numeric_host_forms_getaddrinfo_accepts() -> None:
    assert numeric_host("1.2.3", Family.INET) == "1.2.0.3"
    assert numeric_host("0x7f.1", Family.INET) == "127.0.0.1"
    assert numeric_host("10", Family.INET) == "0.0.0.10"
    assert numeric_host("1.2.3.4 x", Family.INET) is None
    assert numeric_host("256.1.1.1", Family.INET) is None
    assert numeric_host("1.2.3.4", Family.INET6) is None
    assert numeric_host("2001:DB8::1", Family.INET6) == "2001:db8::1"


def test_unreadable_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        parse_file(tmp_path / "missing.cf")
    assert info.value.line == 0


def test_non_utf8_bytes_in_comments(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "latin1.cf"
    path.write_bytes(b"# caf\xe9\nvirtual=192.0.2.10:80\n    real=192.0.2.1:80 gate # \xe9\n")
    assert len(parse_file(path, resolver=R).virtuals[0].reals) == 1


def test_printer_writes_numeric_addresses() -> None:
    text = format_config(p("virtual=vip.example:www\n    real=web1.example:http gate\n"))
    assert "virtual=203.0.113.10:80" in text
    assert "real=192.0.2.1:80 gate 1" in text
    assert "example" not in text


# -- the seed --------------------------------------------------------------------------------


def test_seed_config() -> None:
    require_corpus()
    c = parse_file(shared_dir() / "seed" / "ldirectord.cf", resolver=R, filename="ldirectord.cf")
    assert [v.key for v in c.virtuals] == [
        "TCP 203.0.113.10:80", "TCP 203.0.113.10:443", "TCP 203.0.113.20:80", "TCP 203.0.113.20:443",
    ]  # fmt: skip
    weights = {v.key: [(r.address, r.port, r.weight) for r in v.reals] for v in c.virtuals}
    assert weights["TCP 203.0.113.10:80"] == [
        ("192.0.2.11", 80, 10),
        ("192.0.2.12", 80, 20),
        ("192.0.2.13", 80, 30),
    ]
    assert weights["TCP 203.0.113.20:443"] == [(f"198.51.100.{i}", 443, 10) for i in (11, 12, 13)]
    for v in c.virtuals:
        assert v.scheduler == "wrr"
        assert v.protocol is Protocol.TCP
        assert all(r.forwarding is Forwarding.GATE for r in v.reals)
        assert v.fallback is not None
        assert (v.fallback.address, v.fallback.port) == (v.address, v.port)
        assert v.check.checktype == "negotiate"
        assert (v.check.request, v.check.receive) == ("/areyouthere.php", "OK web[0-9]+")
    assert [v.persistent for v in c.virtuals] == [7200, 7200, 30, 30]
    assert [v.check.service for v in c.virtuals] == ["http", "https", "http", "https"]
    g = c.globals
    assert (g.checktimeout, g.checkinterval, g.autoreload, g.fork, g.quiescent) == (
        8.0,
        5.0,
        True,
        True,
        False,
    )
    assert (g.logfile, g.callback, g.emailalert) == (
        "local0",
        "/usr/local/sbin/lb_sync.sh",
        "my@emailaddress.com",
    )
    assert parse_text(format_config(c), "ldirectord.cf", resolver=R) == c
