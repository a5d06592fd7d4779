/* test_python_roundtrip.c: weights ember saves load into the same torch.nn model in Python, and back.
 *
 * Debian 12 has python3-torch but no python3-safetensors, so the Python side reads and writes the
 * format with a few lines that follow the published specification (8-byte little-endian length,
 * JSON header, raw data; the reference writer's order: dtype widest first, then name; spaces to a
 * multiple of 8). The test checks, in order:
 *   1. torch's load_state_dict(strict=True) takes ember's file into the same nn.Module (a container
 *      G = Sequential(Linear, BatchNorm1d, Tanh, Linear), D = Sequential(LayerNorm, Linear)), and the
 *      model's eval-mode output matches ember's for the same input;
 *   2. torch's own state_dict, written by the reference layout, is byte for byte ember's file;
 *   3. weights changed in Python and saved there load into ember (strict), whose output then matches
 *      Python's.
 * Skipped (77), saying why, where no Python with torch is found (EMBER_PYTHON names one).
 */
#define _POSIX_C_SOURCE 200809L
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const char *python;
static char dir[64];

static const char script[] =
    "import json, struct, sys, torch\n"
    "DT = {'F32': torch.float32, 'F64': torch.float64, 'F16': torch.float16, 'BF16': torch.bfloat16,\n"
    "      'I64': torch.int64, 'I32': torch.int32, 'U8': torch.uint8, 'BOOL': torch.bool}\n"
    "NAME = {v: k for k, v in DT.items()}\n"
    "ORDER = ['BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32',\n"
    "         'F64', 'I64', 'U64']\n"
    "def load(path):\n"
    "    b = open(path, 'rb').read()\n"
    "    n, = struct.unpack('<Q', b[:8])\n"
    "    hdr = json.loads(b[8:8 + n])\n"
    "    meta = hdr.pop('__metadata__', {})\n"
    "    data, out = b[8 + n:], {}\n"
    "    for k, e in hdr.items():\n"
    "        s, t = e['data_offsets']\n"
    "        dt = DT[e['dtype']]\n"
    "        out[k] = (torch.frombuffer(bytearray(data[s:t]), dtype=dt).reshape(e['shape']) if t > s\n"
    "                  else torch.empty(e['shape'], dtype=dt))\n"
    "    return out, meta\n"
    "def save(path, tensors, meta):\n"
    "    items = sorted(tensors.items(), key=lambda kv: (-ORDER.index(NAME[kv[1].dtype]), kv[0]))\n"
    "    hdr, off, blobs = ({'__metadata__': meta} if meta else {}), 0, []\n"
    "    for k, t in items:\n"
    "        b = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()\n"
    "        hdr[k] = {'dtype': NAME[t.dtype], 'shape': list(t.shape), 'data_offsets': [off, off + len(b)]}\n"
    "        off += len(b)\n"
    "        blobs.append(b)\n"
    "    h = json.dumps(hdr, separators=(',', ':'), ensure_ascii=False).encode()\n"
    "    h += b' ' * ((8 - len(h) % 8) % 8)\n"
    "    open(path, 'wb').write(struct.pack('<Q', len(h)) + h + b''.join(blobs))\n"
    "class Net(torch.nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.G = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(),\n"
    "                                     torch.nn.Linear(8, 3))\n"
    "        self.D = torch.nn.Sequential(torch.nn.LayerNorm(3), torch.nn.Linear(3, 1))\n"
    "d = sys.argv[1]\n"
    "net = Net()\n"
    "sd, meta = load(d + '/ember.safetensors')\n"
    "print('python: ember wrote', sorted(sd), 'metadata', meta)\n"
    "net.load_state_dict(sd, strict=True)\n"
    "net.eval()\n"
    "io, _ = load(d + '/io.safetensors')\n"
    "with torch.no_grad():\n"
    "    y = net.D(net.G(io['x']))\n"
    "err = (y - io['y']).abs().max().item()\n"
    "print('python: max |torch - ember| on the same input: %.3g' % err)\n"
    "assert err <= 1e-5, err\n"
    "save(d + '/torch_state_dict.safetensors', net.state_dict(), meta)\n"
    "same = open(d + '/torch_state_dict.safetensors', 'rb').read() == open(d + '/ember.safetensors', 'rb').read()\n"
    "print('python: torch state_dict in the reference layout == ember file, byte for byte:', same)\n"
    "assert same\n"
    "torch.manual_seed(5)\n"
    "with torch.no_grad():\n"
    "    for p in net.parameters():\n"
    "        p.add_(0.1 * torch.randn_like(p))\n"
    "    net.G[1].running_mean += 0.5\n"
    "    net.G[1].num_batches_tracked += 7\n"
    "    y2 = net.D(net.G(io['x']))\n"
    "save(d + '/python.safetensors', net.state_dict(), {'from': 'python'})\n"
    "save(d + '/y2.safetensors', {'y': y2}, {})\n";

static em_nn *make_net(void)
{
    em_nn *c = em_nn_container();
    assert_ok(em_nn_add(c, "G", EM_NN_SEQUENTIAL(em_nn_linear(4, 8, true), em_nn_batchnorm1d(8, NULL), em_nn_tanh(),
                                                 em_nn_linear(8, 3, true))));
    assert_ok(em_nn_add(c, "D", EM_NN_SEQUENTIAL(em_nn_layernorm(EM_SHAPE(3), NULL), em_nn_linear(3, 1, true))));
    return c;
}

static em_tensor *run(em_nn *c, const em_tensor *x)
{
    return em_nn_forward(em_nn_child(c, "D"), em_nn_forward(em_nn_child(c, "G"), x));
}

static const char *path(const char *name)
{
    static char p[4][128];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

static void test_python__round_trip_through_torch(void **state)
{
    (void)state;
    em_scope_begin();
    em_manual_seed(11);
    em_nn *net = make_net();
    assert_ok(em_nn_train(net, true)); /* BatchNorm running statistics that are not the initial ones */
    for (int i = 0; i < 3; i++)
        assert_nonnull_em(run(net, em_randn(EM_SHAPE(6, 4), NULL)));
    assert_ok(em_nn_train(net, false));
    em_safetensors_meta meta = {"format", "pt"};
    assert_ok(em_nn_save_safetensors(net, path("ember.safetensors"), &meta, 1));
    em_tensor *x = em_randn(EM_SHAPE(5, 4), NULL);
    em_tensor *y = run(net, x);
    assert_ok(em_safetensors_write(path("io.safetensors"), (const char *[]){"x", "y"}, (em_tensor *[]){x, y}, 2, NULL,
                                   0));

    FILE *f = fopen(path("check.py"), "w");
    assert_non_null(f);
    fputs(script, f);
    fclose(f);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s %s %s 2>&1", python, path("check.py"), dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[1024];
    while (fgets(line, sizeof line, p) != NULL)
        printf("%s", line);
    int rc = pclose(p);
    assert_int_equal(rc, 0);

    /* Python's weights into a fresh ember net: the outputs agree */
    em_manual_seed(99);
    em_nn *back = make_net();
    assert_ok(em_nn_load_safetensors(back, path("python.safetensors"), true));
    assert_ok(em_nn_train(back, false));
    em_safetensors *py = em_safetensors_open(path("python.safetensors"));
    assert_nonnull_em(py);
    assert_string_equal(em_safetensors_meta_find(py, "from"), "python");
    em_safetensors_free(py);
    int64_t nbt;
    assert_ok(em_tensor_copy_to(em_nn_get(back, "G.1.num_batches_tracked"), &nbt, sizeof nbt, EM_I64));
    assert_int_equal(nbt, 3 + 7);
    em_safetensors *yf = em_safetensors_open(path("y2.safetensors"));
    assert_nonnull_em(yf);
    float want[5], got[5];
    helper_values(em_safetensors_tensor(yf, 0), want, 5);
    em_safetensors_free(yf);
    helper_values(run(back, x), got, 5);
    double worst = 0;
    for (int i = 0; i < 5; i++)
        worst = fmax(worst, fabs((double)got[i] - want[i]));
    printf("ember: max |ember - torch| with Python's weights: %.3g\n", worst);
    assert_true(worst <= 1e-5);
    /* and they are not the weights ember saved */
    float before[5];
    helper_values(y, before, 5);
    assert_true(memcmp(before, got, sizeof got) != 0);
    em_nn_free(net);
    em_nn_free(back);
    em_scope_end();
}

static int cleanup(void **state)
{
    (void)state;
    const char *files[] = {"ember.safetensors", "io.safetensors", "check.py", "torch_state_dict.safetensors",
                           "python.safetensors", "y2.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        remove(path(files[i]));
    rmdir(dir);
    return 0;
}

int main(void)
{
    const char *candidates[] = {getenv("EMBER_PYTHON"), "/usr/bin/python3", "python3"};
    for (size_t i = 0; i < 3 && python == NULL; i++) {
        char cmd[512];
        if (candidates[i] == NULL)
            continue;
        snprintf(cmd, sizeof cmd, "%s -c 'import torch' >/dev/null 2>&1", candidates[i]);
        if (system(cmd) == 0)
            python = candidates[i];
    }
    if (python == NULL) {
        printf("SKIP test_python_roundtrip: no Python with torch (tried $EMBER_PYTHON, /usr/bin/python3, python3; "
               "Debian: apt install python3-torch)\n");
        return 77;
    }
    snprintf(dir, sizeof dir, "/tmp/ember_py_XXXXXX");
    if (mkdtemp(dir) == NULL)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_python__round_trip_through_torch, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, cleanup);
}
