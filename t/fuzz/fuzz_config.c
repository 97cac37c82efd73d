/*
 * fuzz_config.c - libFuzzer target for the YAML configuration loader: any
 * input either loads or fails with a "FILE:LINE:COL: ..." message; it never
 * crashes, leaks or reads out of bounds.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/server/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char path[64];
	dmx_config cfg;
	char err[1024];
	FILE *fp;

	if (path[0] == '\0')
		snprintf(path, sizeof(path), "/tmp/demux-fuzz-%d.yaml",
		    (int)getpid());
	fp = fopen(path, "wb");
	if (fp == NULL)
		return 0;
	fwrite(data, 1, size, fp);
	fclose(fp);
	err[0] = '\0';
	if (dmx_config_load(path, &cfg, err, sizeof(err)) == 0) {
		dmx_config_free(&cfg);
	} else if (strncmp(err, path, strlen(path)) != 0) {
		abort();	/* every error names the file */
	}
	return 0;
}
