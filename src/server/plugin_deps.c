/*
 * plugin_deps.c - the dependency check of plugin_deps.h.
 *
 * The undefined symbols are read from the file's .dynsym (section headers,
 * every offset bounds-checked: the file is the operator's, not ours to
 * trust). dlsym(handle, name) searches exactly the plugin's own scope, the
 * object and its dependencies, and not the global one where demuxd's
 * libraries live: a strong undefined symbol it cannot find is one the
 * plugin borrows from demuxd. Weak ones (__gmon_start__, _ITM_*) are
 * allowed to stay unresolved.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plugin_deps.h"

#if __SIZEOF_POINTER__ == 8
#define ELFCLASS_NATIVE	ELFCLASS64
#else
#define ELFCLASS_NATIVE	ELFCLASS32
#endif

/* "-lmsgpackc" for ".../libmsgpackc.so.2", or the file's name. */
static void
link_flag(const char *file, char *out, size_t len)
{
	const char *base = strrchr(file, '/'), *so;

	base = base ? base + 1 : file;
	so = strstr(base, ".so");
	if (strncmp(base, "lib", 3) == 0 && so != NULL && so > base + 3)
		snprintf(out, len, "-l%.*s", (int)(so - base - 3), base + 3);
	else
		snprintf(out, len, "%s", base);
}

static void
explain(const char *sym, unsigned more, char *why, size_t len)
{
	char flag[128] = "", others[48] = "";
	const char *from = NULL;
	void *addr;
	Dl_info di;

	addr = dlsym(RTLD_DEFAULT, sym);
	if (addr != NULL && dladdr(addr, &di) != 0 && di.dli_fname != NULL &&
	    di.dli_fname[0] != '\0') {
		from = di.dli_fname;
		link_flag(from, flag, sizeof(flag));
	}
	if (more > 0)
		snprintf(others, sizeof(others), " (and %u more)", more);
	snprintf(why, len, "uses %s%s without linking the library that "
	    "provides it: it resolves only through demuxd's own %s; link the "
	    "plugin with %s (and -Wl,--no-undefined to catch this when it is "
	    "built)", sym, others, from ? from : "symbols",
	    from ? flag : "its libraries");
}

int
dmx_plugin_deps_check(void *handle, const char *path, char *why, size_t len)
{
	const ElfW(Ehdr) *eh;
	const ElfW(Shdr) *sh, *str;
	const ElfW(Sym) *sym;
	const char *first = NULL;
	unsigned missing = 0;
	struct stat st;
	size_t size, i, k, nsym;
	uint8_t *map;
	int fd, rc = 0;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return 0;
	if (fstat(fd, &st) != 0 || st.st_size < (off_t)sizeof(*eh)) {
		close(fd);
		return 0;
	}
	size = (size_t)st.st_size;
	map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return 0;
	eh = (const ElfW(Ehdr) *)map;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 ||
	    eh->e_ident[EI_CLASS] != ELFCLASS_NATIVE ||
	    eh->e_shentsize != sizeof(*sh) || eh->e_shoff == 0 ||
	    eh->e_shoff > size || eh->e_shnum > (size - eh->e_shoff) /
	    sizeof(*sh))
		goto out;
	sh = (const ElfW(Shdr) *)(map + eh->e_shoff);
	for (i = 0; i < eh->e_shnum; i++) {
		if (sh[i].sh_type != SHT_DYNSYM || sh[i].sh_link >= eh->e_shnum ||
		    sh[i].sh_entsize != sizeof(*sym) || sh[i].sh_offset > size ||
		    sh[i].sh_size > size - sh[i].sh_offset)
			continue;
		str = &sh[sh[i].sh_link];
		if (str->sh_offset > size || str->sh_size > size -
		    str->sh_offset || str->sh_size == 0 ||
		    map[str->sh_offset + str->sh_size - 1] != '\0')
			continue;
		sym = (const ElfW(Sym) *)(map + sh[i].sh_offset);
		nsym = sh[i].sh_size / sizeof(*sym);
		for (k = 1; k < nsym; k++) {
			const char *name;

			if (sym[k].st_shndx != SHN_UNDEF ||
			    ELF64_ST_BIND(sym[k].st_info) != STB_GLOBAL ||
			    sym[k].st_name == 0 ||
			    sym[k].st_name >= str->sh_size)
				continue;
			name = (const char *)map + str->sh_offset +
			    sym[k].st_name;
			dlerror();
			if (dlsym(handle, name) != NULL || dlerror() == NULL)
				continue;	/* found (a NULL value is fine) */
			if (missing++ == 0)
				first = name;
		}
	}
	if (missing > 0) {
		explain(first, missing - 1, why, len);
		rc = -1;
	}
out:
	munmap(map, size);
	return rc;
}
