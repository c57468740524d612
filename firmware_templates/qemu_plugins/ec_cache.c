/* edgecompile QEMU TCG plugin: cache simulation per kernel.
 *
 *   qemu-... -plugin libec_cache.so,ranges=FILE,out=FILE,l1i=SIZE:WAYS:LINE,l1d=SIZE:WAYS:LINE[,l2=SIZE:WAYS:LINE]
 *
 * FILE `ranges` lists one code range per line, "start end index" (hex addresses, decimal index):
 * the kernels' functions. Every executed instruction and every data access is run through
 * set-associative LRU caches with the given geometry (L1I for fetches, L1D for loads/stores, an
 * optional unified L2 behind both) and attributed to the range its instruction lies in (index -1
 * for everything else). Index -2 marks a helper the kernels call (a micro-kernel the compiler did
 * not inline): its work counts for the kernel whose code ran last. At exit `out` receives one line
 * per index:
 *
 *   index insns l1i_misses loads stores l1d_misses l2_accesses l2_misses
 *
 * With `mark=ADDR` (a function the program calls around each inference) the table is also
 * rewritten at every call of that function, so it is complete even when the program is killed
 * rather than exiting (a serial device loop never exits by itself).
 *
 * A model, not the hardware: no prefetchers, write-allocate, no replacement subtleties; the
 * numbers are deterministic and comparable between builds. Only the plugin API entry points used
 * are declared here (plugin API version 1, QEMU 7.x).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef uint32_t qemu_plugin_meminfo_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
struct qemu_info_t;

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                                  void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
extern uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
extern void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, void (*cb)(unsigned int, void *),
                                                   int flags, void *userdata);
extern void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn,
                                             void (*cb)(unsigned int, qemu_plugin_meminfo_t, uint64_t, void *),
                                             int flags, int rw, void *userdata);
extern _Bool qemu_plugin_mem_is_store(qemu_plugin_meminfo_t info);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void *), void *userdata);

#define CB_NO_REGS 0
#define MEM_RW 3

typedef struct {
  uint32_t sets, ways, line_shift;
  uint64_t *tags;   /* sets * ways, most recent first; 0 = empty (tags are stored + 1) */
} cache_t;

typedef struct {
  uint64_t insns, l1i_miss, loads, stores, l1d_miss, l2_acc, l2_miss;
} stats_t;

typedef struct {
  uint64_t start, end;
  int index;
} range_t;

static cache_t l1i, l1d, l2;
static int have_l2;
static range_t *ranges;
static int n_ranges, max_index = -1;
static stats_t *stats;   /* index + 1: slot 0 = outside every range */
#define HELPER_SLOT 0xFFFFu  /* a helper's instructions go to the kernel that ran last */
static unsigned current_slot;
static FILE *out;
static uint64_t mark_pc = (uint64_t)-1;

static int parse_geometry(const char *s, cache_t *c) {
  unsigned long size, ways, line;
  if (sscanf(s, "%lu:%lu:%lu", &size, &ways, &line) != 3 || !size || !ways || !line) return -1;
  c->ways = (uint32_t)ways;
  c->sets = (uint32_t)(size / (ways * line));
  c->line_shift = 0;
  while ((1ul << c->line_shift) < line) c->line_shift++;
  if (!c->sets) return -1;
  c->tags = calloc((size_t)c->sets * c->ways, sizeof(uint64_t));
  return c->tags ? 0 : -1;
}

/* returns 1 on a hit */
static int cache_access(cache_t *c, uint64_t addr) {
  uint64_t block = addr >> c->line_shift;
  uint64_t *set = c->tags + (block % c->sets) * c->ways;
  uint64_t tag = block + 1;
  for (uint32_t w = 0; w < c->ways; ++w) {
    if (set[w] == tag) {
      memmove(set + 1, set, w * sizeof(uint64_t));
      set[0] = tag;
      return 1;
    }
  }
  memmove(set + 1, set, (c->ways - 1) * sizeof(uint64_t));
  set[0] = tag;
  return 0;
}

static void on_insn(unsigned int vcpu, void *userdata) {
  (void)vcpu;
  uintptr_t packed = (uintptr_t)userdata;
  unsigned slot = (unsigned)(packed & 0xFFFF);
  if (slot == HELPER_SLOT)
    slot = current_slot;
  else if (slot)
    current_slot = slot;
  stats_t *s = &stats[slot];
  uint64_t pc = packed >> 16;
  s->insns++;
  if (!cache_access(&l1i, pc)) {
    s->l1i_miss++;
    if (have_l2) {
      s->l2_acc++;
      if (!cache_access(&l2, pc)) s->l2_miss++;
    }
  }
}

static void on_mem(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *userdata) {
  (void)vcpu;
  unsigned slot = (unsigned)((uintptr_t)userdata & 0xFFFF);
  stats_t *s = &stats[slot == HELPER_SLOT ? current_slot : slot];
  if (qemu_plugin_mem_is_store(info))
    s->stores++;
  else
    s->loads++;
  if (!cache_access(&l1d, vaddr)) {
    s->l1d_miss++;
    if (have_l2) {
      s->l2_acc++;
      if (!cache_access(&l2, vaddr)) s->l2_miss++;
    }
  }
}

static void on_mark(unsigned int vcpu, void *userdata);

static int slot_of(uint64_t pc) {
  for (int i = 0; i < n_ranges; ++i)
    if (pc >= ranges[i].start && pc < ranges[i].end) return ranges[i].index == -2 ? (int)HELPER_SLOT : ranges[i].index + 1;
  return 0;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  size_t n = qemu_plugin_tb_n_insns(tb);
  for (size_t i = 0; i < n; ++i) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    uint64_t pc = qemu_plugin_insn_vaddr(insn);
    uintptr_t slot = (uintptr_t)slot_of(pc);
    if (pc == mark_pc) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, CB_NO_REGS, 0);
    /* the fetch address rides in the upper bits of the callback data (fits 48-bit addresses) */
    qemu_plugin_register_vcpu_insn_exec_cb(insn, on_insn, CB_NO_REGS, (void *)((uintptr_t)(pc << 16) | slot));
    qemu_plugin_register_vcpu_mem_cb(insn, on_mem, CB_NO_REGS, MEM_RW, (void *)slot);
  }
}

static void dump(void) {
  rewind(out);
  for (int i = 0; i <= max_index + 1; ++i) {
    stats_t *s = &stats[i];
    fprintf(out, "%d %llu %llu %llu %llu %llu %llu %llu\n", i - 1, (unsigned long long)s->insns,
            (unsigned long long)s->l1i_miss, (unsigned long long)s->loads, (unsigned long long)s->stores,
            (unsigned long long)s->l1d_miss, (unsigned long long)s->l2_acc, (unsigned long long)s->l2_miss);
  }
  fflush(out);   /* counters only grow, so the text never gets shorter: no truncation needed */
}

static void on_mark(unsigned int vcpu, void *userdata) {
  (void)vcpu;
  (void)userdata;
  dump();
}

static void at_exit(qemu_plugin_id_t id, void *userdata) {
  (void)id;
  (void)userdata;
  if (!out) return;
  dump();
  fclose(out);
  out = NULL;
}

static int load_ranges(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  unsigned long long a, b;
  int idx, cap = 64;
  ranges = malloc(sizeof(range_t) * (size_t)cap);
  while (fscanf(f, "%llx %llx %d", &a, &b, &idx) == 3) {
    if (n_ranges == cap) ranges = realloc(ranges, sizeof(range_t) * (size_t)(cap *= 2));
    ranges[n_ranges++] = (range_t){a, b, idx};
    if (idx > max_index) max_index = idx;
  }
  fclose(f);
  return 0;
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const struct qemu_info_t *info,
                                                              int argc, char **argv) {
  (void)info;
  int ok_i = 0, ok_d = 0;
  for (int i = 0; i < argc; ++i) {
    if (!strncmp(argv[i], "ranges=", 7) && load_ranges(argv[i] + 7)) return -1;
    if (!strncmp(argv[i], "out=", 4)) out = fopen(argv[i] + 4, "w");
    if (!strncmp(argv[i], "l1i=", 4)) ok_i = parse_geometry(argv[i] + 4, &l1i) == 0;
    if (!strncmp(argv[i], "l1d=", 4)) ok_d = parse_geometry(argv[i] + 4, &l1d) == 0;
    if (!strncmp(argv[i], "mark=", 5)) mark_pc = strtoull(argv[i] + 5, NULL, 0);
    if (!strncmp(argv[i], "l2=", 3)) have_l2 = parse_geometry(argv[i] + 3, &l2) == 0;
  }
  if (!out || !ok_i || !ok_d || max_index > 0xFFFE) return -1;
  stats = calloc((size_t)max_index + 2, sizeof(stats_t));
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, at_exit, 0);
  return 0;
}
