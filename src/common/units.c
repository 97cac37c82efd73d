/*
 * units.c - the grammar of units.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <strings.h>

#include "units.h"

/* digits, then a suffix from the table (its multiplier), or none (1) */
static int
parse(const char *s, const char *const *suffix, const uint64_t *mul,
    uint64_t max, uint64_t *out)
{
	unsigned long long v;
	uint64_t m = 1;
	char *end;
	int i;

	if (s == NULL || *s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		return -2;
	if (*end != '\0') {
		for (i = 0; suffix[i] != NULL; i++)
			if (strcasecmp(end, suffix[i]) == 0)
				break;
		if (suffix[i] == NULL)
			return -1;
		m = mul[i];
	}
	if (v > max / m)
		return -2;
	*out = (uint64_t)v * m;
	return 0;
}

int
dmx_parse_size(const char *s, uint64_t max, uint64_t *out)
{
	static const char *const sfx[] = { "k", "kb", "kib", "m", "mb", "mib",
	    "g", "gb", "gib", NULL };
	static const uint64_t mul[] = { 1u << 10, 1u << 10, 1u << 10, 1u << 20,
	    1u << 20, 1u << 20, 1u << 30, 1u << 30, 1u << 30 };

	return parse(s, sfx, mul, max, out);
}

int
dmx_parse_ms(const char *s, uint64_t max, uint64_t *out)
{
	static const char *const sfx[] = { "ms", "s", "m", "h", NULL };
	static const uint64_t mul[] = { 1, 1000, 60000, 3600000 };

	return parse(s, sfx, mul, max, out);
}
