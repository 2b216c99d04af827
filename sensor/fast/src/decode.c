/*
 * decode.c: a captured frame to a pkt_t, as sensor/core/decode.py decodes it: the same
 * fields, and the same malformed reason from the same order of checks.
 *
 * Strategy: one pass down the headers (link layer with its VLAN tags, IPv4 or IPv6 with its
 * extension headers, then the transport header), every read checked against the captured
 * length before it is made, so that whatever the bytes say nothing past f[caplen - 1] is
 * read (fuzzed against the reference in tests/unit/test_fast_decode.py).  No allocation, no
 * state, no Python: the reader thread runs it without the GIL.
 */
#include "fast.h"

const char *REASONS[N_REASONS] = {
    "link_truncated", "link_unsupported", "not_ip", "ip_version", "ipv4_truncated",
    "ipv4_bad_ihl", "ipv4_bad_length", "ipv6_truncated", "ipv6_ext_truncated",
    "ipv6_ext_chain", "tcp_truncated", "tcp_bad_offset", "udp_truncated", "icmp_truncated",
    "snaplen_short", "bad_timestamp"};

/* decode.py's _CUT_SHORT: reasons that become snaplen_short when the wire was longer */
const uint8_t CUT_SHORT[N_REASONS] = {
    [R_LINK_TRUNCATED] = 1, [R_IPV4_TRUNCATED] = 1, [R_IPV6_TRUNCATED] = 1,
    [R_IPV6_EXT_TRUNCATED] = 1, [R_TCP_TRUNCATED] = 1, [R_UDP_TRUNCATED] = 1,
    [R_ICMP_TRUNCATED] = 1};

static inline uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)RD32(p) << 32 | RD32(p + 4);
}

/* The transport header, as decode._decode_transport; `end` may be below `pos`. */
static int decode_transport(const uint8_t *f, long pos, long end, pkt_t *r)
{
    long avail = end - pos;
    r->sport = r->dport = -1;
    r->flags = 0;
    r->seq = 0;
    r->icmp_type = r->icmp_code = -1;
    if (r->proto == P_TCP) {
        if (avail < 20)
            return R_TCP_TRUNCATED;
        const uint8_t *t = f + pos;
        if ((t[12] >> 4) * 4 < 20)
            return R_TCP_BAD_OFFSET;
        r->sport = RD16(t);
        r->dport = RD16(t + 2);
        r->seq = RD32(t + 4);
        r->flags = t[13];
        return -1;
    }
    if (r->proto == P_UDP) {
        if (avail < 8)
            return R_UDP_TRUNCATED;
        r->sport = RD16(f + pos);
        r->dport = RD16(f + pos + 2);
        return -1;
    }
    if (r->proto == P_ICMP || r->proto == P_ICMPV6) {
        if (avail < 4)
            return R_ICMP_TRUNCATED;
        r->icmp_type = f[pos];
        r->icmp_code = f[pos + 1];
        return -1;
    }
    return -1;
}

static int decode_ipv4(const uint8_t *f, long n, long off, pkt_t *r)
{
    if (n < off + 20)
        return R_IPV4_TRUNCATED;
    const uint8_t *h = f + off;
    if (h[0] >> 4 != 4)
        return R_IP_VERSION;
    long ihl = (h[0] & 0x0F) * 4;
    if (ihl < 20)
        return R_IPV4_BAD_IHL;
    long total = RD16(h + 2);
    if (total < ihl)
        return R_IPV4_BAD_LENGTH;
    if (n < off + ihl)
        return R_IPV4_TRUNCATED;
    r->version = 4;
    r->ip_len = (uint32_t)total;
    r->ip_id = RD16(h + 4);
    r->ttl = h[8];
    r->proto = h[9];
    r->src_lo = RD32(h + 12);
    r->dst_lo = RD32(h + 16);
    r->src_hi = r->dst_hi = 0;
    if (RD16(h + 6) & 0x1FFF) {
        r->later = 1;
        return -1;
    }
    r->later = 0;
    long end = off + total < n ? off + total : n;
    return decode_transport(f, off + ihl, end, r);
}

static int decode_ipv6(const uint8_t *f, long n, long off, pkt_t *r)
{
    if (n < off + 40)
        return R_IPV6_TRUNCATED;
    const uint8_t *h = f + off;
    if (h[0] >> 4 != 6)
        return R_IP_VERSION;
    long ip_len = (long)RD16(h + 4) + 40;
    int nh = h[6];
    r->version = 6;
    r->ttl = h[7];
    r->src_hi = rd64(h + 8);
    r->src_lo = rd64(h + 16);
    r->dst_hi = rd64(h + 24);
    r->dst_lo = rd64(h + 32);
    r->ip_len = (uint32_t)ip_len;
    r->ip_id = 0;
    r->later = 0;
    long end = off + ip_len < n ? off + ip_len : n;
    long pos = off + 40;
    int i;
    for (i = 0; i < 8; i++) {
        if (nh == 0 || nh == 43 || nh == 60) {
            if (end < pos + 2)
                return R_IPV6_EXT_TRUNCATED;
            long ext_len = ((long)f[pos + 1] + 1) * 8;
            if (end < pos + ext_len)
                return R_IPV6_EXT_TRUNCATED;
            nh = f[pos];
            pos += ext_len;
        } else if (nh == 44) {
            if (end < pos + 8)
                return R_IPV6_EXT_TRUNCATED;
            uint32_t field = RD16(f + pos + 2);
            r->ip_id = RD32(f + pos + 4);
            nh = f[pos];
            pos += 8;
            if (field >> 3) {
                r->proto = nh;
                r->later = 1;
                return -1;
            }
        } else {
            break;
        }
    }
    if (i == 8)
        return R_IPV6_EXT_CHAIN;
    r->proto = nh;
    return decode_transport(f, pos, end, r);
}

/* decode._decode: -1 for a packet in *r, else the malformed reason. */
int decode_raw(int linktype, const uint8_t *f, long n, pkt_t *r)
{
    long start;
    uint32_t et;
    switch (linktype) {
    case 1: {
        if (n < 14)
            return R_LINK_TRUNCATED;
        et = RD16(f + 12);
        start = 14;
        int tags = 0;
        while (et == 0x8100 || et == 0x88A8 || et == 0x9100) {
            if (tags == 2)
                return R_NOT_IP;
            if (n < start + 4)
                return R_LINK_TRUNCATED;
            et = RD16(f + start + 2);
            start += 4;
            tags++;
        }
        break;
    }
    case 113:
        if (n < 16)
            return R_LINK_TRUNCATED;
        start = 16;
        et = RD16(f + 14);
        break;
    case 276:
        if (n < 20)
            return R_LINK_TRUNCATED;
        start = 20;
        et = RD16(f);
        break;
    case 101:
    case 12:
    case 14:
        start = 0;
        et = 0;
        break;
    case 228:
        start = 0;
        et = 0x0800;
        break;
    case 229:
        start = 0;
        et = 0x86DD;
        break;
    case 0:
    case 108: {
        if (n < 4)
            return R_LINK_TRUNCATED;
        uint32_t be = RD32(f);
        uint32_t le = (uint32_t)f[0] | (uint32_t)f[1] << 8 | (uint32_t)f[2] << 16 | (uint32_t)f[3] << 24;
        uint32_t fam = linktype == 108 ? be : le;
        if (linktype == 0 && fam > 0xFFFF)
            fam = be;
        start = 4;
        if (fam == 2)
            et = 0x0800;
        else if (fam == 10 || fam == 24 || fam == 28 || fam == 30)
            et = 0x86DD;
        else
            return R_NOT_IP;
        break;
    }
    default:
        return R_LINK_UNSUPPORTED;
    }
    if (et == 0x0800)
        return decode_ipv4(f, n, start, r);
    if (et == 0x86DD)
        return decode_ipv6(f, n, start, r);
    if (et == 0) {
        if (n <= start)
            return R_IPV4_TRUNCATED;
        int v = f[start] >> 4;
        if (v == 4)
            return decode_ipv4(f, n, start, r);
        if (v == 6)
            return decode_ipv6(f, n, start, r);
        return R_IP_VERSION;
    }
    return R_NOT_IP;
}

