/*
 * python - handlers written in Python, hosted by demuxd (docs/python.md).
 *
 *   plugins:
 *     - name: calc                  # calc.<function>
 *       path: plugins/python.so
 *       config: { module: calc, path: handlers }
 *
 * Each instance imports one module (config `module`; `path` is prepended
 * to sys.path, relative to the YAML's folder) and serves as methods the
 * names in its __all__, else every public function defined in the module
 * itself; a module-level process_transaction(method, *params) takes every
 * other "<plugin>.<name>" (the catch-all "*", ABI 1.6). Module-level
 * init() and fini() run at load and unload. The module's file is watched:
 * SIGHUP after it changed loads it anew (calls in flight finish on the old
 * module object).
 *
 * One interpreter per process, started by the first instance and never
 * finalized (extension modules cannot be unloaded safely). A reload loads a
 * fresh copy of this .so; every copy pins itself (RTLD_NODELETE), because
 * the interpreter keeps pointers into the copy that created the demux
 * module.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pyplug.h"

static const char *const no_methods[] = { NULL };

/* The process's keys (the first copy's, kept in the demux module). */
static py_keys *keys;

/*
 * Each worker thread keeps its Python thread state from its first call to
 * its end: PyGILState_Ensure/Release around every call would create and
 * destroy one each time (in 3.11 that maps and unmaps its frame stack:
 * two syscalls and a TLB shootdown per call). The state is the thread's
 * PyGILState one, so that every copy of python.so on the thread shares it;
 * keys->ts's destructor deletes it when the thread ends.
 */
static void
py_enter(void)
{
	PyThreadState *ts = PyGILState_GetThisThreadState();

	if (ts != NULL) {
		PyEval_RestoreThread(ts);
		return;
	}
	(void)PyGILState_Ensure();	/* made here, kept: never released */
	(void)pthread_setspecific(keys->ts, PyThreadState_Get());
}

/* Let the GIL go, keeping the thread state for the next call. */
static void
py_leave(void)
{
	(void)PyEval_SaveThread();
}

/* ---- the interpreter ---- */

/* Start Python once per process; called with no GIL. Leaves the GIL
 * held (PyGILState) in *g. */
static int
py_enter_init(PyGILState_STATE *g, char *err, size_t errlen)
{
	Dl_info info;

	/* pin this copy: Python may hold pointers into it forever */
	if (dladdr((void *)py_enter_init, &info) != 0 && info.dli_fname)
		(void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD |
		    RTLD_NODELETE);
	if (!Py_IsInitialized()) {
		PyConfig cfg;
		PyStatus st;

		/* C extension modules (math, _json, ...) resolve libpython's
		 * symbols globally; demuxd loaded us RTLD_LOCAL */
		if (dlopen("libpython3.11.so.1.0", RTLD_NOW | RTLD_GLOBAL |
		    RTLD_NOLOAD) == NULL) {
			snprintf(err, errlen, "cannot make libpython3.11 "
			    "global: %s", dlerror());
			return -1;
		}
		PyConfig_InitPythonConfig(&cfg);
		cfg.install_signal_handlers = 0;	/* demuxd's own */
		cfg.parse_argv = 0;
		cfg.site_import = 1;
		st = Py_InitializeFromConfig(&cfg);
		PyConfig_Clear(&cfg);
		if (PyStatus_Exception(st)) {
			snprintf(err, errlen, "cannot start Python: %s",
			    st.err_msg ? st.err_msg : "?");
			return -1;
		}
		/* from here on every thread takes the GIL through PyGILState;
		 * release it for them */
		(void)PyEval_SaveThread();
	}
	*g = PyGILState_Ensure();
	return 0;
}

/* The current exception as "Type: message" and its traceback (both
 * malloc'd); clears it. code: its `code` attribute when >= 1, else 1. */
static void
take_exception(char **msg, char **trace, int64_t *code)
{
	PyObject *type, *value, *tb, *tbm, *lines, *sep, *joined, *c, *s;
	const char *tn;

	*msg = *trace = NULL;
	*code = 1;
	PyErr_Fetch(&type, &value, &tb);
	PyErr_NormalizeException(&type, &value, &tb);
	if (value == NULL) {
		*msg = strdup("unknown Python error");
		goto out;
	}
	if (tb != NULL)
		PyException_SetTraceback(value, tb);
	tn = ((PyTypeObject *)type)->tp_name;
	if (strrchr(tn, '.'))
		tn = strrchr(tn, '.') + 1;
	c = PyObject_GetAttrString(value, "code");
	if (c != NULL && PyLong_Check(c) && !PyBool_Check(c)) {
		long long v = PyLong_AsLongLong(c);

		if (v >= 1 && !PyErr_Occurred())
			*code = v;
	}
	Py_XDECREF(c);
	PyErr_Clear();
	s = PyObject_Str(value);
	if (asprintf(msg, "%s: %s", tn, s && PyUnicode_Check(s) ?
	    PyUnicode_AsUTF8(s) : "?") < 0)
		*msg = NULL;
	Py_XDECREF(s);
	PyErr_Clear();
	/* the recipe's _trace: traceback.format_exception, joined */
	tbm = PyImport_ImportModule("traceback");
	lines = tbm ? PyObject_CallMethod(tbm, "format_exception", "OOO",
	    type, value, tb ? tb : Py_None) : NULL;
	sep = PyUnicode_FromString("");
	joined = lines && sep ? PyUnicode_Join(sep, lines) : NULL;
	if (joined != NULL)
		*trace = strdup(PyUnicode_AsUTF8(joined));
	Py_XDECREF(joined);
	Py_XDECREF(sep);
	Py_XDECREF(lines);
	Py_XDECREF(tbm);
	PyErr_Clear();
out:
	Py_XDECREF(type);
	Py_XDECREF(value);
	Py_XDECREF(tb);
}

/* ---- loading the module ---- */

static int
config_str(const demux_host *h, const char *key, const char **out,
    char *err, size_t errlen)
{
	return demux_config_str(h, key, NULL, out, err, errlen);
}

/* Add dir to the front of sys.path (once). */
static int
add_path(const char *dir)
{
	PyObject *path = PySys_GetObject("path"), *s;	/* borrowed */
	int rc = -1;

	if (path == NULL || (s = PyUnicode_FromString(dir)) == NULL)
		return -1;
	if (PySequence_Contains(path, s) == 1 || PyList_Insert(path, 0, s) == 0)
		rc = 0;
	Py_DECREF(s);
	return rc;
}

/* The names to serve: __all__, else the module's own public functions;
 * process_transaction, init and fini are not among them. */
static PyObject *
method_names(PyObject *mod)
{
	PyObject *all = PyObject_GetAttrString(mod, "__all__"), *names, *d;
	PyObject *k, *v, *modname;
	Py_ssize_t pos = 0;

	if (all != NULL) {
		names = PySequence_List(all);
		Py_DECREF(all);
		return names;
	}
	PyErr_Clear();
	names = PyList_New(0);
	d = PyModule_GetDict(mod);
	modname = PyObject_GetAttrString(mod, "__name__");
	while (names != NULL && PyDict_Next(d, &pos, &k, &v)) {
		const char *n = PyUnicode_Check(k) ? PyUnicode_AsUTF8(k) : NULL;
		PyObject *vm;
		int own;

		if (n == NULL || n[0] == '_' || !PyFunction_Check(v) ||
		    strcmp(n, "process_transaction") == 0 ||
		    strcmp(n, "init") == 0 || strcmp(n, "fini") == 0)
			continue;
		/* defined here, not imported into it */
		vm = PyObject_GetAttrString(v, "__module__");
		own = vm != NULL && modname != NULL &&
		    PyObject_RichCompareBool(vm, modname, Py_EQ) == 1;
		Py_XDECREF(vm);
		PyErr_Clear();
		if (own)
			PyList_Append(names, k);
	}
	Py_XDECREF(modname);
	return names;
}

/* Import the module anew and find its methods. */
static int
load_module(py_inst *in)
{
	PyObject *mods = PyImport_GetModuleDict(), *names = NULL, *pt, *f;
	const char **decl = NULL;
	char derr[512];
	Py_ssize_t n, i;
	int rc = -1;

	/* a reload imports the file again: calls in flight keep the old
	 * module object */
	if (PyDict_GetItemString(mods, in->module) != NULL)
		PyDict_DelItemString(mods, in->module);
	in->mod = PyImport_ImportModule(in->module);
	if (in->mod == NULL)
		return -1;			/* the caller reports it */
	if ((f = PyObject_GetAttrString(in->mod, "__file__")) != NULL &&
	    PyUnicode_Check(f))
		(void)demux_watch_file(in->host, PyUnicode_AsUTF8(f));
	Py_XDECREF(f);
	PyErr_Clear();
	names = method_names(in->mod);
	if (names == NULL)
		return -1;
	n = PyList_GET_SIZE(names);
	pt = PyObject_GetAttrString(in->mod, "process_transaction");
	if (pt != NULL && !PyCallable_Check(pt))
		Py_CLEAR(pt);
	PyErr_Clear();
	decl = calloc((size_t)n + 2, sizeof(*decl));
	in->fn = calloc((size_t)n + 1, sizeof(*in->fn));
	if (decl == NULL || in->fn == NULL) {
		PyErr_NoMemory();
		goto out;
	}
	for (i = 0; i < n; i++) {
		PyObject *k = PyList_GET_ITEM(names, i);

		if (!PyUnicode_Check(k)) {
			PyErr_SetString(PyExc_TypeError, "__all__ holds a "
			    "name that is not a str");
			goto out;
		}
		decl[i] = PyUnicode_AsUTF8(k);
		in->fn[i] = PyObject_GetAttr(in->mod, k);
		if (in->fn[i] == NULL || !PyCallable_Check(in->fn[i])) {
			PyErr_Format(PyExc_TypeError, "%s.%s is not a "
			    "function", in->module, decl[i]);
			goto out;
		}
		in->nfn++;
	}
	in->catchall = -1;
	if (pt != NULL) {
		decl[n] = "*";
		in->fn[n] = pt;
		pt = NULL;
		in->catchall = (int)n;
		in->nfn++;
	}
	if (in->nfn == 0) {
		PyErr_Format(PyExc_ImportError, "module %s has no public "
		    "function and no process_transaction: nothing to serve",
		    in->module);
		goto out;
	}
	if (demux_declare_methods(in->host, decl, derr, sizeof(derr)) != 0) {
		PyErr_Format(PyExc_ValueError, "%s", derr);
		goto out;
	}
	rc = 0;
out:
	Py_XDECREF(pt);
	Py_XDECREF(names);
	free(decl);
	return rc;
}

/* Call the module's f (init or fini) if it has one. */
static int
call_hook(py_inst *in, const char *f)
{
	PyObject *fn = PyObject_GetAttrString(in->mod, f), *r;

	if (fn == NULL) {
		PyErr_Clear();
		return 0;
	}
	r = PyObject_CallNoArgs(fn);
	Py_DECREF(fn);
	Py_XDECREF(r);
	return r != NULL ? 0 : -1;
}

static void
inst_free(py_inst *in)
{
	size_t i;

	for (i = 0; i < in->nfn; i++)
		Py_XDECREF(in->fn[i]);
	free(in->fn);
	Py_XDECREF(in->mod);
	Py_XDECREF(in->config);
	Py_XDECREF(in->ext_type);
	free(in);
}

static int
py_init(const demux_host *h, void **state, char *err, size_t errlen)
{
	const char *module = NULL, *path = NULL;
	char dir[PATH_MAX], full[PATH_MAX * 2];
	PyGILState_STATE g;
	py_inst *in;
	py_ctx ctx = { NULL, NULL };
	char *msg, *trace;
	int64_t code;

	if (!DEMUX_HOST_HAS(h, declare_methods)) {
		snprintf(err, errlen, "needs a demuxd with plugin ABI 1.6");
		return -1;
	}
	/* module and path are ours; every other key is the module's own
	 * (demux.config) */
	if (config_str(h, "module", &module, err, errlen) != 0 ||
	    config_str(h, "path", &path, err, errlen) != 0)
		return -1;
	if (module == NULL || module[0] == '\0') {
		snprintf(err, errlen, "config: module: the Python module to "
		    "import is required (config: { module: NAME })");
		return -1;
	}
	if ((in = calloc(1, sizeof(*in))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	in->host = h;
	in->catchall = -1;
	in->prefix_len = strlen(h->name) + 1;
	snprintf(in->module, sizeof(in->module), "%s", module);
	if (py_enter_init(&g, err, errlen) != 0) {
		free(in);
		return -1;
	}
	ctx.inst = in;
	if (py_demux_module(&keys, &in->ext_type) != 0)
		goto pyfail;
	pthread_setspecific(keys->ctx, &ctx);
	in->config = h->config != NULL ?
	    py_from_msgpack(h->config, in->ext_type) : PyDict_New();
	if (in->config == NULL)
		goto pyfail;
	if (path != NULL) {
		demux_config_dir(h, dir, sizeof(dir));
		snprintf(full, sizeof(full), "%s%s%s", path[0] == '/' ? "" :
		    dir, path[0] == '/' ? "" : "/", path);
		if (add_path(full) != 0)
			goto pyfail;
	}
	if (load_module(in) != 0 || call_hook(in, "init") != 0)
		goto pyfail;
	pthread_setspecific(keys->ctx, NULL);
	PyGILState_Release(g);
	*state = in;
	return 0;
pyfail:
	/* the traceback goes to the log whole; err has its last lines */
	take_exception(&msg, &trace, &code);
	h->log(h, DEMUX_LOG_ERROR, "importing %s: %s\n%s", module,
	    msg ? msg : "?", trace ? trace : "");
	{
		const char *t = trace ? trace : "";
		size_t tl = strlen(t);

		snprintf(err, errlen, "python: %s%s%s", msg ? msg : "?",
		    tl ? "; traceback (its end): " : "",
		    tl > 300 ? t + tl - 300 : t);
	}
	free(msg);
	free(trace);
	if (keys != NULL)
		pthread_setspecific(keys->ctx, NULL);
	inst_free(in);
	PyGILState_Release(g);
	return -1;
}

static void
py_fini(void *state)
{
	py_inst *in = state;
	PyGILState_STATE g = PyGILState_Ensure();
	py_ctx ctx = { in, NULL };

	pthread_setspecific(keys->ctx, &ctx);
	if (call_hook(in, "fini") != 0) {
		char *msg, *trace;
		int64_t code;

		take_exception(&msg, &trace, &code);
		in->host->log(in->host, DEMUX_LOG_WARN, "%s.fini(): %s\n%s",
		    in->module, msg ? msg : "?", trace ? trace : "");
		free(msg);
		free(trace);
	}
	pthread_setspecific(keys->ctx, NULL);
	inst_free(in);
	PyGILState_Release(g);
}

static void
py_process(void *state, const demux_request *req, demux_call *call)
{
	py_inst *in = state;
	const msgpack_object *params = req->params;
	PyObject *args, *res, *x;
	py_ctx ctx = { in, call };
	uint32_t i, skip;
	char why[256];

	if (req->method_index < 0 || (size_t)req->method_index >= in->nfn) {
		demux_error(call, DEMUX_E_INTERNAL, "no such method index");
		return;
	}
	py_enter();
	pthread_setspecific(keys->ctx, &ctx);
	/* process_transaction(method, *params): the name without the
	 * plugin's prefix first */
	skip = req->method_index == in->catchall ? 1 : 0;
	args = PyTuple_New((Py_ssize_t)(params->via.array.size + skip));
	if (args == NULL)
		goto pyerr;
	if (skip) {
		const char *m = req->method;

		x = PyUnicode_FromString(strlen(m) > in->prefix_len ?
		    m + in->prefix_len : m);
		if (x == NULL) {
			Py_DECREF(args);
			goto pyerr;
		}
		PyTuple_SET_ITEM(args, 0, x);
	}
	for (i = 0; i < params->via.array.size; i++) {
		x = py_from_msgpack(&params->via.array.ptr[i], in->ext_type);
		if (x == NULL) {
			Py_DECREF(args);
			goto pyerr;
		}
		PyTuple_SET_ITEM(args, i + skip, x);
	}
	res = PyObject_Call(in->fn[req->method_index], args, NULL);
	Py_DECREF(args);
	if (res == NULL)
		goto pyerr;
	if (py_to_msgpack(demux_result(call), res, in->ext_type, why,
	    sizeof(why)) != 0)
		demux_error(call, DEMUX_E_INTERNAL, "%s returned what cannot "
		    "be sent: %s", req->method, why);
	Py_DECREF(res);
	goto out;
pyerr:
	{
		char *msg, *trace;
		int64_t code;

		take_exception(&msg, &trace, &code);
		demux_error_trace(call, code, trace, "%s", msg ? msg :
		    "Python error");
		free(msg);
		free(trace);
	}
out:
	pthread_setspecific(keys->ctx, NULL);
	py_leave();
}

static const demux_plugin python_plugin = {
	DEMUX_PLUGIN_HEADER,
	.name = "python",
	.version = "1.0.0",
	.methods = no_methods,
	.init = py_init,
	.fini = py_fini,
	.process_transaction = py_process,
};

DEMUX_EXPORT const demux_plugin *
DEMUX_PLUGIN_ENTRY(void)
{
	return &python_plugin;
}
