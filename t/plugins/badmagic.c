/* badmagic - exports the entry symbol but returns something else. */
#include <demux/plugin.h>

static const unsigned int not_a_descriptor[16] = { 0x12345678u };

DEMUX_EXPORT const demux_plugin *
DEMUX_PLUGIN_ENTRY(void)
{
	return (const demux_plugin *)(const void *)not_a_descriptor;
}
