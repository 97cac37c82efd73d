/* nosym - a shared object without the entry symbol. */
#include <demux/plugin.h>

DEMUX_EXPORT int some_other_symbol(void);

DEMUX_EXPORT int
some_other_symbol(void)
{
	return 42;
}
