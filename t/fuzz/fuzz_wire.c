/*
 * fuzz_wire.c - libFuzzer target for the request decoder.
 *
 * Feeds the input to the framing scanner the way demuxd reads a socket (in
 * pieces whose sizes come from the input itself), then reads each frame with
 * the bounded cursor as dispatch does, and checks the scanner against
 * msgpack-c: a frame the scanner accepts must decode with msgpack_unpack to
 * exactly the same length (unless it nests deeper than msgpack-c's stack).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "../../src/common/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
read_header(const uint8_t *p, size_t n)
{
	dmx_rd r;
	uint32_t cnt, ml;
	uint64_t type, id;
	int64_t code;
	const char *m;

	dmx_rd_init(&r, p, n);
	if (dmx_rd_array(&r, &cnt) != 0 || dmx_rd_uint(&r, &type) != 0)
		return;
	if (type == 0 && dmx_rd_uint(&r, &id) != 0)
		return;
	if (type == 1) {
		(void)dmx_rd_uint(&r, &id);
		if (dmx_rd_array(&r, &cnt) == 0) {
			(void)dmx_rd_int(&r, &code);
			(void)dmx_rd_str(&r, &m, &ml);
		}
		return;
	}
	if (dmx_rd_str(&r, &m, &ml) == 0 && dmx_rd_is_array(&r))
		(void)dmx_rd_skip(&r);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	dmx_scan s = DMX_SCAN_INIT;
	size_t off = 0, avail, flen, step;
	msgpack_zone zone;
	msgpack_object o;
	size_t uoff;
	int rc;

	if (size < 1)
		return 0;
	/* the first byte picks the read size: 1..256 bytes at a time */
	step = (size_t)data[0] + 1;
	data++;
	size--;
	msgpack_zone_init(&zone, 2048);
	avail = step < size ? step : size;
	while (off < size) {
		rc = dmx_scan_frame(&s, data + off, avail - off, 1u << 20, &flen);
		if (rc == DMX_SCAN_FRAME) {
			if (flen == 0 || off + flen > avail)
				abort();	/* the scanner lied */
			read_header(data + off, flen);
			uoff = 0;
			msgpack_zone_clear(&zone);
			rc = msgpack_unpack((const char *)data + off, flen, &uoff,
			    &zone, &o);
			/* NOMEM is msgpack-c's answer to nesting past its
			 * stack: the framing is still right */
			if (rc != MSGPACK_UNPACK_NOMEM_ERROR &&
			    !(rc == MSGPACK_UNPACK_SUCCESS && uoff == flen))
				abort();	/* scanner and msgpack-c disagree */
			if (dmx_wire_one_object(data + off, flen) != flen)
				abort();
			off += flen;
			continue;
		}
		if (rc != DMX_SCAN_MORE)
			break;		/* invalid or too big: demuxd closes */
		if (avail == size)
			break;		/* incomplete at the end */
		avail = avail + step < size ? avail + step : size;
	}
	msgpack_zone_destroy(&zone);
	return 0;
}
