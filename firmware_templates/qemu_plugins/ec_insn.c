/* edgecompile QEMU TCG plugin: counts guest instructions between calls of a marker function.
 *
 *   qemu-aarch64 -plugin libec_insn.so,mark=0x4001a0,out=/tmp/counts ./app ...
 *
 * Every time the guest enters the function at `mark`, the number of instructions executed
 * since the previous entry is appended to `out` (one decimal number per line). The device
 * program calls the marker right before and right after each inference, so every second line
 * is one inference's instruction count: deterministic, independent of the host's speed.
 *
 * Only the few plugin API entry points used here are declared (QEMU plugin API version 1,
 * QEMU 7.x); the plugin is built on the user's machine by edgecompile when first needed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_info_t;

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                                  void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, int op, void *ptr, uint64_t imm);
extern void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, void (*cb)(unsigned int, void *),
                                                 int flags, void *userdata);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void *), void *userdata);

#define INLINE_ADD_U64 0
#define CB_NO_REGS 0

static uint64_t count, last;
static uint64_t mark;
static FILE *out;

static void on_mark(unsigned int vcpu, void *userdata) {
  (void)vcpu;
  (void)userdata;
  if (out) {
    fprintf(out, "%llu\n", (unsigned long long)(count - last));
    fflush(out);
  }
  last = count;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  qemu_plugin_register_vcpu_tb_exec_inline(tb, INLINE_ADD_U64, &count, qemu_plugin_tb_n_insns(tb));
  if (mark && qemu_plugin_tb_vaddr(tb) == mark) qemu_plugin_register_vcpu_tb_exec_cb(tb, on_mark, CB_NO_REGS, 0);
}

static void at_exit(qemu_plugin_id_t id, void *userdata) {
  (void)id;
  (void)userdata;
  if (out) fclose(out);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const struct qemu_info_t *info,
                                                              int argc, char **argv) {
  (void)info;
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "mark=", 5) == 0) mark = strtoull(argv[i] + 5, 0, 0);
    if (strncmp(argv[i], "out=", 4) == 0) out = fopen(argv[i] + 4, "w");
  }
  if (!mark || !out) return -1;
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, at_exit, 0);
  return 0;
}
