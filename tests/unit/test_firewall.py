"""The board's nftables ruleset follows the configured dark blocks."""

from __future__ import annotations

import pytest

from sensor.edges.firewall import render_ruleset


def test_ruleset_guards_the_configured_blocks() -> None:
    text = render_ruleset(["203.0.113.0/25", "198.51.100.0/24", "2001:db8:beef::/48"])
    assert "elements = { 203.0.113.0/25, 198.51.100.0/24 }" in text
    assert "elements = { 2001:db8:beef::/48 }" in text
    assert "ip daddr @dark4 counter drop" in text and "policy drop" in text


def test_ipv4_only_config_leaves_the_ipv6_set_empty() -> None:
    text = render_ruleset(["198.51.100.0/24"])
    assert text.count("elements") == 1


def test_a_block_with_host_bits_is_refused() -> None:
    with pytest.raises(ValueError):
        render_ruleset(["198.51.100.1/24"])


@pytest.mark.parametrize("block", ["0.0.0.0/0", "::/0", "128.0.0.0/1", "127.0.0.0/8",
                                   "224.0.0.0/4", "169.254.0.0/16", "fe80::/10",
                                   "255.255.255.255/32", "0.0.0.0/8", "::ffff:0:0/96"])
def test_a_block_that_is_not_dark_is_refused(block: str) -> None:
    """With 0.0.0.0/0 the ruleset dropped all IPv4 output, the board's own uplink included;
    whoever calls render_ruleset, such a ruleset is never rendered."""
    with pytest.raises(ValueError, match="not a dark block"):
        render_ruleset(["198.51.100.0/24", block])


def test_a_private_lab_block_is_guarded() -> None:
    assert "elements = { 10.77.0.0/16 }" in render_ruleset(["10.77.0.0/16"])
