/*
 * pyplug.h - the python plugin's own header: what its three files share.
 *
 *   python.c    the plugin: the interpreter, importing the module,
 *               init/fini, running a call
 *   demuxmod.c  the `demux` module handlers import (Error, Ext, log,
 *               cancelled, config)
 *   convert.c   MessagePack <-> Python objects
 *
 * Threads: demuxd's workers call into Python holding the GIL only while
 * Python runs (PyGILState_Ensure/Release around each call); a handler that
 * sleeps or does I/O releases it. Every function here is called with the
 * GIL held.
 */
#ifndef PYPLUG_H
#define PYPLUG_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>

#include <demux/plugin.h>

/* One plugin instance: one module. */
typedef struct py_inst {
	const demux_host *host;
	char		 module[256];
	PyObject	*mod;		/* the imported module */
	PyObject	*config;	/* demux.config: a dict */
	PyObject	**fn;		/* per declared method (the "*" slot:
					 * process_transaction) */
	size_t		 nfn;
	int		 catchall;	/* index of "*", or -1 */
	size_t		 prefix_len;	/* "name." */
	PyObject	*ext_type;	/* demux.Ext */
} py_inst;

/* What the current thread is running: demux.cancelled(), demux.log() and
 * demux.config read it. Shared by every copy of python.so a reload loads
 * (the key is kept in the demux module). */
typedef struct py_ctx {
	py_inst		*inst;
	demux_call	*call;		/* NULL during init/fini */
} py_ctx;

/* The process's thread keys, made once by the first copy of python.so and
 * shared by every copy through the demux module (a reload's copy has
 * statics of its own): the call context, and each worker's Python thread
 * state (kept from its first call to its end; the key's destructor, in
 * the first copy, deletes it). */
typedef struct py_keys {
	pthread_key_t	 ctx;		/* py_ctx * */
	pthread_key_t	 ts;		/* PyThreadState * to delete */
} py_keys;

/* ---- demuxmod.c ---- */
/* Make sure sys.modules["demux"] exists (the first instance creates it)
 * and give the keys and its Ext type. 0, or -1 with a Python error. */
int	 py_demux_module(py_keys **keys, PyObject **ext_type);

/* ---- convert.c ---- */
/* A new reference, or NULL with a Python error set. */
PyObject *py_from_msgpack(const msgpack_object *o, PyObject *ext_type);
/* Pack v; 0, or -1 with a reason in why (the first object that cannot be
 * sent, by type). */
int	 py_to_msgpack(msgpack_packer *pk, PyObject *v, PyObject *ext_type,
	    char *why, size_t whylen);

#endif
