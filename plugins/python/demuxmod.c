/*
 * demuxmod.c - the module `demux` that Python handlers import:
 *
 *   demux.Error(code, message)  an exception answered [code, ...]
 *   demux.Ext(code, data)       a MessagePack extension value
 *   demux.cancelled()           the current call's cancellation flag
 *   demux.log(level, message)   a line in demuxd's log, tagged with the
 *                               plugin's name (level: "error", "warn",
 *                               "info", "debug" or 0..3)
 *   demux.config                this plugin's YAML config, as a dict
 *
 * One module per process, whatever the number of instances: cancelled,
 * log and config find the instance and the call in the thread's context
 * (py_ctx under a pthread key kept in the module, `_ctxkey`), which the
 * plugin sets around init, fini and every call.
 */
#include <stdlib.h>
#include <string.h>

#include "pyplug.h"

static const char demux_py[] =
    "class Error(Exception):\n"
    "    \"\"\"Raise to answer [code, 'Error: message', traceback].\"\"\"\n"
    "    def __init__(self, code, message):\n"
    "        super().__init__(message)\n"
    "        self.code = code\n"
    "        self.message = message\n"
    "class Ext:\n"
    "    \"\"\"A MessagePack extension value: code -128..127, bytes.\"\"\"\n"
    "    __slots__ = ('code', 'data')\n"
    "    def __init__(self, code, data):\n"
    "        self.code = int(code)\n"
    "        self.data = bytes(data)\n"
    "    def __eq__(self, other):\n"
    "        return (isinstance(other, Ext) and self.code == other.code\n"
    "                and self.data == other.data)\n"
    "    def __hash__(self):\n"
    "        return hash((self.code, self.data))\n"
    "    def __repr__(self):\n"
    "        return 'demux.Ext(%d, %r)' % (self.code, self.data)\n"
    "ERROR, WARN, INFO, DEBUG = 0, 1, 2, 3\n"
    "def __getattr__(name):\n"
    "    if name == 'config':\n"
    "        return _config()\n"
    "    raise AttributeError(\"module 'demux' has no attribute %r\" % name)\n";

static py_keys keys;

static py_ctx *
ctx_now(void)
{
	return pthread_getspecific(keys.ctx);
}

/* A worker thread is ending: take the GIL with its state, clear it and
 * delete it (which lets the GIL go). Not PyGILState_Release: by now the
 * thread's own TSS slot may read empty. */
static void
ts_end(void *ts)
{
	PyEval_RestoreThread(ts);
	PyThreadState_Clear(ts);
	PyThreadState_DeleteCurrent();
}

static PyObject *
m_cancelled(PyObject *self, PyObject *noargs)
{
	py_ctx *c = ctx_now();

	(void)self;
	(void)noargs;
	return PyBool_FromLong(c != NULL && c->call != NULL &&
	    demux_cancelled(c->call));
}

static PyObject *
m_log(PyObject *self, PyObject *args)
{
	static const char *const names[] = { "error", "warn", "info", "debug" };
	py_ctx *c = ctx_now();
	PyObject *lv;
	const char *msg;
	int level = -1, i;

	(void)self;
	if (!PyArg_ParseTuple(args, "Os", &lv, &msg))
		return NULL;
	if (PyLong_Check(lv)) {
		level = (int)PyLong_AsLong(lv);
	} else if (PyUnicode_Check(lv)) {
		for (i = 0; i < 4; i++)
			if (strcmp(PyUnicode_AsUTF8(lv), names[i]) == 0)
				level = i;
	}
	if (level < 0 || level > 3) {
		PyErr_SetString(PyExc_ValueError, "demux.log: level must be "
		    "'error', 'warn', 'info', 'debug' or 0..3");
		return NULL;
	}
	if (c == NULL || c->inst == NULL) {
		/* a thread the handler started itself: no instance to tag */
		fprintf(stderr, "demux.log: %s\n", msg);
		Py_RETURN_NONE;
	}
	c->inst->host->log(c->inst->host, level, "%s", msg);
	Py_RETURN_NONE;
}

static PyObject *
m_config(PyObject *self, PyObject *noargs)
{
	py_ctx *c = ctx_now();

	(void)self;
	(void)noargs;
	if (c == NULL || c->inst == NULL || c->inst->config == NULL)
		return PyDict_New();
	Py_INCREF(c->inst->config);
	return c->inst->config;
}

static PyMethodDef methods[] = {
	{ "cancelled", m_cancelled, METH_NOARGS,
	  "True once the current call's answer is no longer wanted." },
	{ "log", m_log, METH_VARARGS,
	  "log(level, message): a line in demuxd's log." },
	{ "_config", m_config, METH_NOARGS, NULL },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef def = {
	PyModuleDef_HEAD_INIT, "demux", "demuxd's side of Python handlers.",
	-1, methods, NULL, NULL, NULL, NULL,
};

int
py_demux_module(py_keys **keysp, PyObject **ext_type)
{
	PyObject *mods = PyImport_GetModuleDict(), *m, *d, *r, *cap;

	m = PyDict_GetItemString(mods, "demux");	/* borrowed */
	if (m == NULL) {
		/* the first instance in this process */
		if (pthread_key_create(&keys.ctx, NULL) != 0 ||
		    pthread_key_create(&keys.ts, ts_end) != 0) {
			PyErr_SetString(PyExc_RuntimeError, "pthread_key_create");
			return -1;
		}
		if ((m = PyModule_Create(&def)) == NULL)
			return -1;
		d = PyModule_GetDict(m);
		if (PyDict_SetItemString(d, "__builtins__",
		    PyEval_GetBuiltins()) != 0)
			goto fail;
		r = PyRun_String(demux_py, Py_file_input, d, d);
		if (r == NULL)
			goto fail;
		Py_DECREF(r);
		cap = PyCapsule_New(&keys, "demux._ctxkey", NULL);
		if (cap == NULL || PyModule_AddObject(m, "_ctxkey", cap) != 0) {
			Py_XDECREF(cap);
			goto fail;
		}
		if (PyDict_SetItemString(mods, "demux", m) != 0)
			goto fail;
		Py_DECREF(m);		/* sys.modules holds it */
	}
	cap = PyObject_GetAttrString(m, "_ctxkey");
	*keysp = cap ? PyCapsule_GetPointer(cap, "demux._ctxkey") : NULL;
	Py_XDECREF(cap);
	*ext_type = PyObject_GetAttrString(m, "Ext");
	return *keysp != NULL && *ext_type != NULL ? 0 : -1;
fail:
	Py_DECREF(m);
	return -1;
}
