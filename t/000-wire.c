/*
 * 000-wire.c - unit tests of the framing scanner, the bounded cursor and the
 * address parser shared by demuxd and libmux.
 */
#include <msgpack.h>
#include <string.h>

#include "../src/common/buf.h"
#include "../src/common/uri.h"
#include "../src/common/wire.h"
#include "tap.h"

/* Pack a sample stream of several messages of every msgpack type. */
static void
sample(dmx_buf *b, size_t *ends, int *nframes)
{
	msgpack_packer pk;
	static char big[70000];
	int n = 0;

	memset(big, 'x', sizeof(big));
	msgpack_packer_init(&pk, b, dmx_buf_pack_write);
	/* 1: a request with nested params */
	msgpack_pack_array(&pk, 4);
	msgpack_pack_int(&pk, 0);
	msgpack_pack_uint32(&pk, 4000000000u);
	msgpack_pack_str_with_body(&pk, "echo.echo", 9);
	msgpack_pack_array(&pk, 6);
	msgpack_pack_nil(&pk);
	msgpack_pack_true(&pk);
	msgpack_pack_int64(&pk, -1234567890123LL);
	msgpack_pack_double(&pk, 1.5);
	msgpack_pack_map(&pk, 2);
	msgpack_pack_str_with_body(&pk, "k", 1);
	msgpack_pack_array(&pk, 0);
	msgpack_pack_str_with_body(&pk, "b", 1);
	msgpack_pack_bin_with_body(&pk, "\x00\x01", 2);
	msgpack_pack_ext_with_body(&pk, "abcd", 4, 7);
	ends[n++] = b->len;
	/* 2: a big string (str32) */
	msgpack_pack_array(&pk, 3);
	msgpack_pack_int(&pk, 2);
	msgpack_pack_str_with_body(&pk, "m", 1);
	msgpack_pack_array(&pk, 1);
	msgpack_pack_str_with_body(&pk, big, sizeof(big));
	ends[n++] = b->len;
	/* 3: a lone integer (valid msgpack, invalid request) */
	msgpack_pack_int(&pk, 7);
	ends[n++] = b->len;
	/* 4: array16 of 20 floats and an ext8 */
	msgpack_pack_array(&pk, 21);
	for (int i = 0; i < 20; i++)
		msgpack_pack_float(&pk, (float)i);
	msgpack_pack_ext_with_body(&pk, big, 300, 1);
	ends[n++] = b->len;
	*nframes = n;
}

static void
test_scanner(void)
{
	dmx_buf b = DMX_BUF_INIT;
	size_t ends[8], len, off, split, fl;
	int nframes, i, bad = 0;
	dmx_scan s = DMX_SCAN_INIT;

	sample(&b, ends, &nframes);

	/* whole buffer: each frame found exactly */
	off = 0;
	for (i = 0; i < nframes; i++) {
		int rc = dmx_scan_frame(&s, (uint8_t *)b.data + off, b.len - off,
		    1u << 20, &len);

		if (rc != DMX_SCAN_FRAME || off + len != ends[i])
			bad++;
		off += len;
	}
	ok(bad == 0 && off == b.len, "whole stream: %d frames at the right "
	    "boundaries", nframes);

	/* the stream fed in two pieces, split at every possible byte of the
	 * first 300 bytes and every 97th after: state resumes correctly */
	bad = 0;
	for (split = 1; split < b.len; split += split < 300 ? 1 : 97) {
		dmx_scan st = DMX_SCAN_INIT;
		int got = 0, rc;

		off = 0;
		/* first piece */
		while ((rc = dmx_scan_frame(&st, (uint8_t *)b.data + off,
		    split - off, 1u << 20, &fl)) == DMX_SCAN_FRAME) {
			if (off + fl != ends[got])
				bad++;
			got++;
			off += fl;
			if (off >= split)
				break;
		}
		if (rc != DMX_SCAN_FRAME && rc != DMX_SCAN_MORE)
			bad++;
		/* the rest arrives */
		while (off < b.len) {
			rc = dmx_scan_frame(&st, (uint8_t *)b.data + off,
			    b.len - off, 1u << 20, &fl);
			if (rc != DMX_SCAN_FRAME || off + fl != ends[got]) {
				bad++;
				break;
			}
			got++;
			off += fl;
		}
		if (got != nframes)
			bad++;
	}
	ok(bad == 0, "stream split at every point resumes to the same frames");

	/* byte by byte: MORE until the last byte of each frame */
	{
		dmx_scan st = DMX_SCAN_INIT;
		size_t n, start = 0;
		int got = 0, rc;

		bad = 0;
		for (n = 1; n <= ends[0]; n++) {
			rc = dmx_scan_frame(&st, (uint8_t *)b.data + start, n,
			    1u << 20, &fl);
			if (n < ends[0] && rc != DMX_SCAN_MORE)
				bad++;
			if (n == ends[0] && (rc != DMX_SCAN_FRAME || fl != n))
				bad++;
			else if (n == ends[0])
				got++;
		}
		ok(bad == 0 && got == 1, "a frame dripped one byte at a time "
		    "completes on its last byte");
	}

	/* max: a frame announcing more than max is refused from its header */
	{
		dmx_scan st = DMX_SCAN_INIT;
		int rc = dmx_scan_frame(&st, (uint8_t *)b.data + ends[0],
		    10, 1000, &fl);

		check_int(rc, ==, DMX_SCAN_TOOBIG, "a 70 kB string against "
		    "max 1000 is refused once its 5-byte header is in (10 bytes)");
	}
	{
		/* array32 claiming 4 billion elements */
		const uint8_t a32[] = { 0xdd, 0xff, 0xff, 0xff, 0xff };
		dmx_scan st = DMX_SCAN_INIT;

		check_int(dmx_scan_frame(&st, a32, sizeof(a32), 1u << 26, &fl),
		    ==, DMX_SCAN_TOOBIG, "an array32 of 2^32-1 elements is "
		    "refused before its elements arrive");
	}
	{
		const uint8_t bad1[] = { 0x93, 0x00, 0xc1 };
		dmx_scan st = DMX_SCAN_INIT;

		check_int(dmx_scan_frame(&st, bad1, sizeof(bad1), 1000, &fl),
		    ==, DMX_SCAN_INVALID, "the reserved byte 0xc1 is invalid");
	}
	check_int(dmx_wire_one_object(b.data, ends[0]), ==, ends[0],
	    "one_object accepts exactly one object");
	check_int(dmx_wire_one_object(b.data, ends[1]), ==, 0,
	    "one_object refuses two objects");
	check_int(dmx_wire_one_object(b.data, ends[0] - 1), ==, 0,
	    "one_object refuses a truncated object");
	dmx_buf_release(&b);
}

static void
test_cursor(void)
{
	const uint8_t req[] = { 0x94, 0x00, 0xce, 0xee, 0x6b, 0x28, 0x00,
	    0xa4, 'e', 'c', 'h', 'o', 0x90 };
	const uint8_t neg[] = { 0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	    0xff, 0xfe };
	const uint8_t big[] = { 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	    0xff, 0xff };
	const uint8_t shortstr[] = { 0xd9, 0x10, 'a', 'b' };
	dmx_rd r;
	uint32_t n, sl;
	uint64_t u;
	int64_t i;
	const char *s;

	dmx_rd_init(&r, req, sizeof(req));
	ok(dmx_rd_array(&r, &n) == 0 && n == 4 && dmx_rd_uint(&r, &u) == 0 &&
	    u == 0 && dmx_rd_uint(&r, &u) == 0 && u == 4000000000u &&
	    dmx_rd_str(&r, &s, &sl) == 0 && sl == 4 && memcmp(s, "echo", 4) == 0
	    && dmx_rd_is_array(&r) && dmx_rd_skip(&r) == 0 &&
	    dmx_rd_left(&r) == 0, "cursor reads a request header");
	dmx_rd_init(&r, neg, sizeof(neg));
	ok(dmx_rd_int(&r, &i) == 0 && i == -2, "int64 -2");
	dmx_rd_init(&r, neg, sizeof(neg));
	ok(dmx_rd_uint(&r, &u) != 0 && dmx_rd_left(&r) == sizeof(neg),
	    "a negative int is not a uint, and the cursor does not move");
	dmx_rd_init(&r, big, sizeof(big));
	ok(dmx_rd_int(&r, &i) != 0 && dmx_rd_uint(&r, &u) == 0 &&
	    u == UINT64_MAX, "2^64-1 is a uint but not an int64");
	dmx_rd_init(&r, shortstr, sizeof(shortstr));
	ok(dmx_rd_str(&r, &s, &sl) != 0, "a string longer than the buffer is "
	    "refused, not read past the end");
	dmx_rd_init(&r, req, 3);
	ok(dmx_rd_array(&r, &n) == 0 && dmx_rd_uint(&r, &u) == 0 &&
	    dmx_rd_uint(&r, &u) != 0, "a truncated uint32 is refused");
}

static void
test_uri(void)
{
	dmx_uri u;
	char err[256];

	ok(dmx_uri_parse("unix:/tmp/x.sock", &u, err, sizeof(err)) == 0 &&
	    u.kind == DMX_URI_UNIX && strcmp(u.path, "/tmp/x.sock") == 0,
	    "unix:PATH");
	ok(dmx_uri_parse("tcp:127.0.0.1:7411", &u, err, sizeof(err)) == 0 &&
	    u.kind == DMX_URI_TCP && strcmp(u.host, "127.0.0.1") == 0 &&
	    strcmp(u.port, "7411") == 0, "tcp:IPv4:PORT");
	ok(dmx_uri_parse("tcp:[::1]:7411", &u, err, sizeof(err)) == 0 &&
	    strcmp(u.host, "::1") == 0 && strcmp(u.port, "7411") == 0,
	    "tcp:[IPv6]:PORT");
	ok(dmx_uri_parse("tcp:::1:7411", &u, err, sizeof(err)) != 0 &&
	    strstr(err, "[ADDR]:PORT") != NULL, "a bare IPv6 literal is "
	    "refused with a hint: %s", err);
	ok(dmx_uri_parse("http://x", &u, err, sizeof(err)) != 0 &&
	    strstr(err, "unix:, tcp: or tls:") != NULL, "unknown scheme "
	    "refused: %s", err);
	ok(dmx_uri_parse("tls:127.0.0.1:7412", &u, err, sizeof(err)) == 0 &&
	    u.kind == DMX_URI_TCP && u.tls == 1 && strcmp(u.port, "7412") == 0,
	    "tls:HOST:PORT is tcp, then TLS");
	ok(dmx_uri_parse("tcp:host:port", &u, err, sizeof(err)) != 0,
	    "non-numeric port refused");
	ok(dmx_uri_parse("unix:", &u, err, sizeof(err)) != 0,
	    "empty path refused");
}

int
main(void)
{
	test_scanner();
	test_cursor();
	test_uri();
	done_testing();
	return exit_status();
}
