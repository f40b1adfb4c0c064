/* deadrelu's fused per-unit reduction: one read of each activation per batch.

   The activation is an (outer, units, inner) float32 array, C-contiguous. One call
   reduces it per unit (count of active observations, sum h, sum h^2, sum |h|, count at
   the floor, count at the ceiling, min, max) and adds the result into the site's
   float64 running accumulators, leaving out every unit whose batch slice held NaN/inf
   (its sum is then not finite) -- the same rule as deadrelu.stats.Accumulator.add.

   The rows are (units * inner) columns (a conv output's rows are whole images: units =
   channels, inner = H*W). Per-column accumulators for a block of columns stay in L1 while
   every row of the block streams past, ROW_STEP rows at a time: the contributions of a
   step are summed in float (like torch's own float32 sums) and added to float64 column
   sums once a step, so the per-value work vectorises and counts stay exact. Then the
   columns of each unit are folded into its sums. (Reading each unit's run with register
   accumulators instead was 3-10x slower: the compiler did not vectorise it.)

   Comparisons follow IEEE (NaN is never active, never at a bound); min/max of a slice
   with NaN are discarded with the slice. Rows are split over up to `threads` threads, each
   with its own partial sums: torch's own OpenMP team when deadrelu.fused handed its
   GOMP_parallel over (deadrelu_fused_use_team), else POSIX threads. No Python, no torch headers: compiled into the
   package's extension module deadrelu._fused when the package is installed (_fused.c adds
   the module around this file) and called through ctypes by deadrelu.fused.

   Built with portable flags (the same binary may be a wheel run on any x86-64 or ARM CPU).
   On x86-64 with GCC and glibc the column loops are compiled three times (baseline SSE2,
   AVX2, AVX-512F) and the loader picks the widest the CPU has (target_clones, an ifunc):
   on the machine of benchmarks/RESULTS.md that ran 1.3-2.6x faster than SSE2 alone and
   faster than -march=native (benchmarks/kernel_flags.py). Elsewhere the build is plain
   portable C; -DDEADRELU_NO_CLONES turns the clones off. */

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Bumped whenever deadrelu_fused_update's arguments or meaning change: deadrelu.fused
   refuses a library built from another version (a stale in-place build, say). */
#define DEADRELU_FUSED_ABI 3

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8 && \
    defined(__linux__) && defined(__GLIBC__) && !defined(DEADRELU_NO_CLONES)
#define CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define CLONES
#endif

#define NSUM 6 /* active, total, total_sq, total_abs, at_floor, at_ceiling (SUM_FIELDS order) */
#define NROW 8 /* + min, max */
#define COLUMN_BLOCK 256
#define ROW_STEP 8

typedef struct {
    const float *x;
    const void *a;
    int a_mode; /* 0: active read from x, 1: from float32 a, 2: from uint8/bool a, 3: from |x| */
    int64_t row0, row1, units, inner;
    float threshold, floor_at, ceiling_at;
    int want_abs, want_floor, want_ceiling;
    double *part; /* NROW x units */
    /* deadrelu_fused_activation only: */
    float *out;           /* where the activation's output goes (may be x itself: in place) */
    float low, high;      /* clamp kinds: the bounds */
    const float *slopes;  /* leaky kinds: the negative-side slope(s) */
    int slope_per_unit;   /* slopes[unit] rather than slopes[0] */
} job_t;

/* One value of row k of the step. */
#define UPDATE(k, MODE, ABS, FLOOR, CEIL)                                                      \
    {                                                                                          \
        const float v = x[k * columns + c];                                                    \
        const float s = MODE == 0 ? v : MODE == 1 ? af[k * columns + c] : MODE == 2 ? (float)ab[k * columns + c] \
                                                                  : fabsf(v);                  \
        act += s > thr ? 1.0f : 0.0f;                                                          \
        tot += v;                                                                              \
        sq += v * v;                                                                           \
        if (ABS) absolute += fabsf(v);                                                         \
        if (FLOOR) low_count += v <= fl ? 1.0f : 0.0f;                                         \
        if (CEIL) high_count += v >= ce ? 1.0f : 0.0f;                                         \
        low = v < low ? v : low;                                                               \
        high = v > high ? v : high;                                                            \
    }

#define STEP_BEGIN                                                                             \
    float act = 0.0f, low_count = 0.0f, high_count = 0.0f, tot = 0.0f, sq = 0.0f;             \
    float absolute = 0.0f, low = lo[c], high = hi[c];

#define STEP_END(ABS, FLOOR, CEIL)                                                             \
    active[c] += act;                                                                          \
    if (FLOOR) at_floor[c] += low_count;                                                       \
    if (CEIL) at_ceiling[c] += high_count;                                                     \
    total[c] += tot;                                                                           \
    total_sq[c] += sq;                                                                         \
    if (ABS) total_abs[c] += absolute;                                                         \
    lo[c] = low;                                                                               \
    hi[c] = high;

/* Ask for the block's rows PREFETCH_STEPS steps ahead (a cache line of 16 floats at a time): a
   block's rows lie a whole row apart, too far apart for the hardware's stream prefetcher to
   follow, so without this every step waits on memory. */
#ifndef PREFETCH_STEPS
#define PREFETCH_STEPS 1
#endif
#define PREFETCH_AHEAD(BASE, ROW, WRITE)                                                       \
    if (PREFETCH_STEPS > 0) {                                                                  \
        const int64_t ahead = (ROW) + PREFETCH_STEPS * ROW_STEP;                               \
        const int64_t last = ahead + ROW_STEP < job->row1 ? ahead + ROW_STEP : job->row1;      \
        for (int64_t r = ahead; r < last; r++)                                                 \
            for (int64_t c = 0; c < width; c += 16)                                            \
                __builtin_prefetch((BASE) + r * columns + c0 + c, WRITE, 3);                   \
    }

/* One step of `step` rows over the block's columns, each value through U (UPDATE or
   TILE_UPDATE, with its four flags): a full step of ROW_STEP (8) rows unrolled, a last short
   step row by row. Both kernels run their steps with this. */
#define STEP_ROWS(U, A, ABS, FLOOR, CEIL)                                                      \
    if (step == ROW_STEP) {                                                                    \
        for (int64_t c = 0; c < width; c++) {                                                  \
            STEP_BEGIN                                                                         \
            U(0, A, ABS, FLOOR, CEIL) U(1, A, ABS, FLOOR, CEIL) U(2, A, ABS, FLOOR, CEIL)      \
            U(3, A, ABS, FLOOR, CEIL) U(4, A, ABS, FLOOR, CEIL) U(5, A, ABS, FLOOR, CEIL)      \
            U(6, A, ABS, FLOOR, CEIL) U(7, A, ABS, FLOOR, CEIL)                                \
            STEP_END(ABS, FLOOR, CEIL)                                                         \
        }                                                                                      \
    } else {                                                                                   \
        for (int64_t k = 0; k < step; k++) {                                                   \
            for (int64_t c = 0; c < width; c++) {                                              \
                STEP_BEGIN                                                                     \
                U(k, A, ABS, FLOOR, CEIL)                                                      \
                STEP_END(ABS, FLOOR, CEIL)                                                     \
            }                                                                                  \
        }                                                                                      \
    }

/* A column block's running sums (lo / hi are declared beside them: the fused activation adds its slopes). */
#define COLUMN_SUMS                                                                            \
        double total[COLUMN_BLOCK], total_sq[COLUMN_BLOCK], total_abs[COLUMN_BLOCK];           \
        float active[COLUMN_BLOCK], at_floor[COLUMN_BLOCK], at_ceiling[COLUMN_BLOCK];

/* Column c of a block starts empty. */
#define RESET_COLUMN(c)                                                                        \
                total[c] = total_sq[c] = total_abs[c] = 0.0;                                   \
                active[c] = at_floor[c] = at_ceiling[c] = 0.0f;                                \
                lo[c] = INFINITY;                                                              \
                hi[c] = -INFINITY;

/* A column block's sums into the job's per-unit partials (both kernels end a block with this).
   With inner > 1 a unit's columns are a run of the block: summed first, then added to the unit's
   partials once (a per-column division and eight scattered updates cost ~0.5 ns per value when a
   block holds only a few rows: a batch of 8 images or sequences). */
#define FOLD_COLUMNS(ABS, FLOOR, CEIL)                                                         \
            double *part = job->part;                                                          \
            const int64_t units = job->units;                                                  \
            for (int64_t c = 0; c < width;) {                                                  \
                const int64_t unit = (c0 + c) / inner;                                         \
                const int64_t run_end = (unit + 1) * inner - c0;                               \
                const int64_t end = run_end < width ? run_end : width;                         \
                double s_act = 0.0, s_tot = 0.0, s_sq = 0.0, s_abs = 0.0, s_fl = 0.0, s_ce = 0.0; \
                float s_lo = INFINITY, s_hi = -INFINITY;                                       \
                for (int64_t k = c; k < end; k++) {                                            \
                    s_act += active[k];                                                        \
                    s_tot += total[k];                                                         \
                    s_sq += total_sq[k];                                                       \
                    if (ABS) s_abs += total_abs[k];                                            \
                    if (FLOOR) s_fl += at_floor[k];                                            \
                    if (CEIL) s_ce += at_ceiling[k];                                           \
                    s_lo = lo[k] < s_lo ? lo[k] : s_lo;                                        \
                    s_hi = hi[k] > s_hi ? hi[k] : s_hi;                                        \
                }                                                                              \
                part[0 * units + unit] += s_act;                                               \
                part[1 * units + unit] += s_tot;                                               \
                part[2 * units + unit] += s_sq;                                                \
                if (ABS) part[3 * units + unit] += s_abs;                                      \
                if (FLOOR) part[4 * units + unit] += s_fl;                                     \
                if (CEIL) part[5 * units + unit] += s_ce;                                      \
                if (s_lo < part[6 * units + unit]) part[6 * units + unit] = s_lo;              \
                if (s_hi > part[7 * units + unit]) part[7 * units + unit] = s_hi;              \
                c = end;                                                                       \
            }

#define COLUMN_BODY(MODE, ABS, FLOOR, CEIL)                                                    \
    CLONES static void columns_##MODE##ABS##FLOOR##CEIL(const job_t *job) {                    \
        const int64_t columns = job->units * job->inner, inner = job->inner;                   \
        const float thr = job->threshold, fl = job->floor_at, ce = job->ceiling_at;           \
        COLUMN_SUMS                                                                    \
        float lo[COLUMN_BLOCK], hi[COLUMN_BLOCK];                                              \
        for (int64_t c0 = 0; c0 < columns; c0 += COLUMN_BLOCK) {                               \
            const int64_t width = columns - c0 < COLUMN_BLOCK ? columns - c0 : COLUMN_BLOCK;   \
            for (int64_t c = 0; c < width; c++) {                                              \
                RESET_COLUMN(c)                                                                \
            }                                                                                  \
            for (int64_t row = job->row0; row < job->row1; row += ROW_STEP) {                  \
                const int64_t step = job->row1 - row < ROW_STEP ? job->row1 - row : ROW_STEP;  \
                const int64_t base = row * columns + c0;                                       \
                const float *restrict x = job->x + base;                                       \
                const float *restrict af = MODE == 1 ? (const float *)job->a + base : x;       \
                const uint8_t *restrict ab = MODE == 2 ? (const uint8_t *)job->a + base : 0;   \
                PREFETCH_AHEAD(job->x, row, 0)                                                 \
                STEP_ROWS(UPDATE, MODE, ABS, FLOOR, CEIL)                                      \
            }                                                                                  \
            FOLD_COLUMNS(ABS, FLOOR, CEIL)                                                     \
        }                                                                                      \
    }

#define VARIANTS(MODE)                                                                         \
    COLUMN_BODY(MODE, 0, 0, 0) COLUMN_BODY(MODE, 0, 0, 1) COLUMN_BODY(MODE, 0, 1, 0)           \
    COLUMN_BODY(MODE, 0, 1, 1) COLUMN_BODY(MODE, 1, 0, 0) COLUMN_BODY(MODE, 1, 0, 1)           \
    COLUMN_BODY(MODE, 1, 1, 0) COLUMN_BODY(MODE, 1, 1, 1)

VARIANTS(0)
VARIANTS(1)
VARIANTS(2)
VARIANTS(3)

typedef void (*kernel_t)(const job_t *);

#define ROW(MODE, KIND)                                                                         \
    {KIND##_##MODE##000, KIND##_##MODE##001, KIND##_##MODE##010, KIND##_##MODE##011,            \
     KIND##_##MODE##100, KIND##_##MODE##101, KIND##_##MODE##110, KIND##_##MODE##111}

static const kernel_t COLUMNS[4][8] = {ROW(0, columns), ROW(1, columns), ROW(2, columns), ROW(3, columns)};

static void clear_part(double *part, int64_t units) {
    memset(part, 0, sizeof(double) * NSUM * units);
    for (int64_t u = 0; u < units; u++) {
        part[6 * units + u] = INFINITY;
        part[7 * units + u] = -INFINITY;
    }
}

typedef struct {
    kernel_t kernel;
    job_t job;
} task_t;

static void *run_task(void *arg) {
    task_t *task = (task_t *)arg;
    task->kernel(&task->job);
    return 0;
}

#define MAX_THREADS 64

/* The process's OpenMP runtime, when deadrelu.fused found one (torch's own libgomp): its
   GOMP_parallel runs a function on a team of the pool torch's operators run on. Right after
   each torch op that pool's workers spin-wait on the cores, so a POSIX thread started here
   competes with them (a split over pthreads cost more than one thread on 2 cores), while the
   team picks the work up at once. NULL: the pthreads below. */
typedef void (*team_parallel_t)(void (*)(void *), void *, unsigned, unsigned);
static team_parallel_t team_parallel = 0;

/* Use `parallel` (the address of the loaded libgomp's GOMP_parallel, or NULL for POSIX
   threads) to split calls over threads from now on. */
void deadrelu_fused_use_team(void *parallel) { team_parallel = (team_parallel_t)parallel; }

typedef struct {
    task_t *tasks;
    int64_t count;
    int64_t next; /* the next task to take (atomic) */
} team_t;

/* Each member of the team takes the next task until none is left (a team may be smaller
   than asked for). */
static void run_team(void *arg) {
    team_t *team = (team_t *)arg;
    for (;;) {
        const int64_t t = __atomic_fetch_add(&team->next, 1, __ATOMIC_RELAXED);
        if (t >= team->count) return;
        run_task(&team->tasks[t]);
    }
}

/* Run `kernel` over the rows of `base` (split over up to `threads` threads, each with its
   own partial sums), then add the merged sums into the accumulators, leaving out every unit
   whose batch slice held NaN/inf. Returns 0, or -1 when memory ran out (nothing written to
   the accumulators; an activation's output may be partly written). */
static int drive(kernel_t kernel, const job_t *base, int64_t outer, int threads, int64_t min_per_thread,
                 const int64_t *rows, double *acc_sums, double *acc_observations, double *acc_minimum,
                 double *acc_maximum) {
    const int64_t units = base->units, inner = base->inner;
    const int64_t total = outer * units * inner;
    int64_t count = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    if (min_per_thread > 0 && total / min_per_thread < count) count = total / min_per_thread;
    if (count > outer) count = outer;
    if (count < 1) count = 1;
    double *parts = (double *)malloc(sizeof(double) * NROW * units * count);
    if (!parts) return -1;
    task_t tasks[MAX_THREADS];
    pthread_t handles[MAX_THREADS];
    int started[MAX_THREADS];
    for (int64_t t = 0; t < count; t++) {
        double *part = parts + NROW * units * t;
        clear_part(part, units);
        tasks[t].kernel = kernel;
        tasks[t].job = *base;
        tasks[t].job.row0 = outer * t / count;
        tasks[t].job.row1 = outer * (t + 1) / count;
        tasks[t].job.part = part;
        started[t] = 0;
    }
    if (count > 1 && team_parallel) {
        team_t team = {.tasks = tasks, .count = count, .next = 0};
        team_parallel(run_team, &team, (unsigned)count, 0);
    } else {
        for (int64_t t = 1; t < count; t++) started[t] = pthread_create(&handles[t], 0, run_task, &tasks[t]) == 0;
        run_task(&tasks[0]);
        for (int64_t t = 1; t < count; t++) {
            if (started[t]) pthread_join(handles[t], 0);
            else run_task(&tasks[t]);
        }
    }
    double *sum = parts;
    for (int64_t t = 1; t < count; t++) {
        const double *part = parts + NROW * units * t;
        for (int64_t i = 0; i < NSUM * units; i++) sum[i] += part[i];
        for (int64_t u = 0; u < units; u++) {
            if (part[6 * units + u] < sum[6 * units + u]) sum[6 * units + u] = part[6 * units + u];
            if (part[7 * units + u] > sum[7 * units + u]) sum[7 * units + u] = part[7 * units + u];
        }
    }
    const double observations = (double)(outer * inner);
    for (int64_t u = 0; u < units; u++) {
        /* sum h over finite float32 values is finite in double: not finite <=> NaN/inf seen. */
        if (!isfinite(sum[1 * units + u])) continue;
        acc_observations[u] += observations;
        for (int f = 0; f < NSUM; f++)
            if (rows[f] >= 0) acc_sums[rows[f] * units + u] += sum[f * units + u];
        if (sum[6 * units + u] < acc_minimum[u]) acc_minimum[u] = sum[6 * units + u];
        if (sum[7 * units + u] > acc_maximum[u]) acc_maximum[u] = sum[7 * units + u];
    }
    free(parts);
    return 0;
}

/* Reduce one batch and add it into the accumulators.

   "active" is source > threshold, the source by a_mode: 0 x itself, 1 the float32 array a,
   2 the uint8/bool array a, 3 |x| (a gated product: active where it is not 0; NaN never is).
   rows[f] is the accumulator row of sum f (SUM_FIELDS order), or -1 when the site does
   not keep it; acc_sums is (kept rows) x units. Returns 0, -1 when memory ran out, -2 for
   an unknown a_mode. */
int deadrelu_fused_update(const float *x, const void *a, int a_mode, int64_t outer, int64_t units,
                          int64_t inner, float threshold, float floor_at, float ceiling_at,
                          int want_abs, int want_floor, int want_ceiling,
                          int threads, int64_t min_per_thread, const int64_t *rows,
                          double *acc_sums, double *acc_observations, double *acc_minimum,
                          double *acc_maximum) {
    if (a_mode < 0 || a_mode > 3) return -2;
    const int variant = (want_abs ? 4 : 0) | (want_floor ? 2 : 0) | (want_ceiling ? 1 : 0);
    job_t job = {.x = x, .a = a, .a_mode = a_mode, .units = units, .inner = inner, .threshold = threshold,
                 .floor_at = floor_at, .ceiling_at = ceiling_at, .want_abs = want_abs,
                 .want_floor = want_floor, .want_ceiling = want_ceiling};
    return drive(COLUMNS[a_mode][variant], &job, outer, threads, min_per_thread, rows, acc_sums,
                 acc_observations, acc_minimum, acc_maximum);
}

/* ---- The fused activation: the activation and its site's statistics in one pass. ----

   It shares the reduction's job_t, column accumulators and drive(). During a scan a
   ReLU-family module on float32 CPU data runs this instead of its own forward (deadrelu.capturing.fused_forward): each block
   of ROW_STEP rows x COLUMN_BLOCK columns of the pre-activation x is read once, its
   activation written to `out` and reduced from there while it is in L1, with the same
   blocking as deadrelu_fused_update (the same statistics, up to the compiler's association
   of the float sums). `out` may be x itself (an in-place module); when "active" is judged
   on the pre-activation (negative slopes) in place, the block's output waits in an L1 tile
   until its input was judged. (Always going through the tile cost ~0.3 ms more per 6M
   values here: ~1.6 ms against ~2.7 ms for activation + hook on a 64x64x32x32 ReLU.)

   The activations are written as torch 2.x's CPU kernels compute them, so the outputs are
   bit-identical (tests/test_fused_activation.py compares bit patterns, -0.0 and NaN included):
   clamp kinds (ReLU: [0, inf], ReLU6, Hardtanh): x < low ? low : x > high ? high : x, which
   keeps NaN and -0.0 like torch's clamp (max(low, x) then min(high, .) with x as the second
   operand); leaky kinds (LeakyReLU, PReLU, eval-mode RReLU): x > 0 ? x : x * slope. Kinds with
   an exponential (ELU, SELU, CELU) are left to the hook path: torch computes expm1 with its
   own vectorised approximation (Sleef), which plain C does not reproduce bit for bit. */

/* One activation value at column c of the block. */
#define ACTIVATE(ACT, v, c) (ACT == 0 ? ((v) < low ? low : (v) > high ? high : (v)) : ((v) > 0.0f ? (v) : (v) * slope[c]))

/* One value of row k of the block's output (src: out, or the tile): like UPDATE, with
   "active" read from the output (FROM_INPUT 0) or from the pre-activation (FROM_INPUT 1). */
#define TILE_UPDATE(k, FROM_INPUT, ABS, FLOOR, CEIL)                                            \
    {                                                                                          \
        const float v = src[k * stride + c];                                                   \
        const float s = FROM_INPUT ? x[k * columns + c] : v;                                   \
        act += s > thr ? 1.0f : 0.0f;                                                          \
        tot += v;                                                                              \
        sq += v * v;                                                                           \
        if (ABS) absolute += fabsf(v);                                                         \
        if (FLOOR) low_count += v <= fl ? 1.0f : 0.0f;                                         \
        if (CEIL) high_count += v >= ce ? 1.0f : 0.0f;                                         \
        low = v < low ? v : low;                                                               \
        high = v > high ? v : high;                                                            \
    }

#define ACTIVATION_BODY(ACT, FROM_INPUT, ABS, FLOOR, CEIL)                                     \
    CLONES static void activation_##ACT##FROM_INPUT##ABS##FLOOR##CEIL(const job_t *job) {      \
        const int64_t columns = job->units * job->inner, inner = job->inner;                   \
        const float thr = job->threshold, fl = job->floor_at, ce = job->ceiling_at;           \
        const float low = job->low, high = job->high;                                          \
        COLUMN_SUMS                                                                    \
        float lo[COLUMN_BLOCK], hi[COLUMN_BLOCK], slope[COLUMN_BLOCK];                         \
        float tile[ROW_STEP * COLUMN_BLOCK];                                                   \
        /* In place with "active" read from the input: the block's output waits in a tile */   \
        /* until its input was judged; otherwise it is written to out and reduced from there. */ \
        const int use_tile = FROM_INPUT && job->out == job->x;                                 \
        for (int64_t c0 = 0; c0 < columns; c0 += COLUMN_BLOCK) {                               \
            const int64_t width = columns - c0 < COLUMN_BLOCK ? columns - c0 : COLUMN_BLOCK;   \
            for (int64_t c = 0; c < width; c++) {                                              \
                RESET_COLUMN(c)                                                                \
                if (ACT == 1) slope[c] = job->slopes[job->slope_per_unit ? (c0 + c) / inner : 0]; \
            }                                                                                  \
            for (int64_t row = job->row0; row < job->row1; row += ROW_STEP) {                  \
                const int64_t step = job->row1 - row < ROW_STEP ? job->row1 - row : ROW_STEP;  \
                const int64_t base = row * columns + c0;                                       \
                const float *x = job->x + base;                                                \
                float *out = job->out + base;                                                  \
                float *src = use_tile ? tile : out;                                            \
                const int64_t stride = use_tile ? COLUMN_BLOCK : columns;                      \
                for (int64_t k = 0; k < step; k++)                                             \
                    for (int64_t c = 0; c < width; c++) {                                      \
                        const float v = x[k * columns + c];                                    \
                        src[k * stride + c] = ACTIVATE(ACT, v, c);                             \
                    }                                                                          \
                PREFETCH_AHEAD(job->x, row, 0)                                                 \
                if (job->out != job->x) PREFETCH_AHEAD(job->out, row, 1)                       \
                STEP_ROWS(TILE_UPDATE, FROM_INPUT, ABS, FLOOR, CEIL)                           \
                if (use_tile)                                                                  \
                    for (int64_t k = 0; k < step; k++)                                         \
                        memcpy(out + k * columns, tile + k * COLUMN_BLOCK, sizeof(float) * width); \
            }                                                                                  \
            FOLD_COLUMNS(ABS, FLOOR, CEIL)                                                     \
        }                                                                                      \
    }

#define ACTIVATION_VARIANTS(ACT, FROM_INPUT)                                                   \
    ACTIVATION_BODY(ACT, FROM_INPUT, 0, 0, 0) ACTIVATION_BODY(ACT, FROM_INPUT, 0, 0, 1)        \
    ACTIVATION_BODY(ACT, FROM_INPUT, 0, 1, 0) ACTIVATION_BODY(ACT, FROM_INPUT, 0, 1, 1)        \
    ACTIVATION_BODY(ACT, FROM_INPUT, 1, 0, 0) ACTIVATION_BODY(ACT, FROM_INPUT, 1, 0, 1)        \
    ACTIVATION_BODY(ACT, FROM_INPUT, 1, 1, 0) ACTIVATION_BODY(ACT, FROM_INPUT, 1, 1, 1)

ACTIVATION_VARIANTS(0, 0)
ACTIVATION_VARIANTS(0, 1)
ACTIVATION_VARIANTS(1, 0)
ACTIVATION_VARIANTS(1, 1)

#define ACTIVATION_ROW(ACT, FROM_INPUT)                                                         \
    {activation_##ACT##FROM_INPUT##000, activation_##ACT##FROM_INPUT##001,                      \
     activation_##ACT##FROM_INPUT##010, activation_##ACT##FROM_INPUT##011,                      \
     activation_##ACT##FROM_INPUT##100, activation_##ACT##FROM_INPUT##101,                      \
     activation_##ACT##FROM_INPUT##110, activation_##ACT##FROM_INPUT##111}

static const kernel_t ACTIVATIONS[2][2][8] = {{ACTIVATION_ROW(0, 0), ACTIVATION_ROW(0, 1)},
                                              {ACTIVATION_ROW(1, 0), ACTIVATION_ROW(1, 1)}};

/* Bumped whenever deadrelu_fused_activation's arguments or meaning change. */
#define DEADRELU_ACTIVATION_ABI 2

/* Compute an activation of the (outer, units, inner) C-contiguous float32 array x into out
   (x itself for an in-place module) and add its statistics into the accumulators, as
   deadrelu_fused_update does for the output.

   act 0: clamp to [low, high] (high = inf for ReLU); act 1: negative side times
   slopes[unit] (slope_per_unit) or slopes[0]. from_input: "active" is x > threshold rather
   than output > threshold. Returns 0, -1 when memory ran out before anything was written,
   -2 for an unknown act. */
int deadrelu_fused_activation(const float *x, float *out, int act, float low, float high, const float *slopes,
                              int slope_per_unit, int from_input, int64_t outer, int64_t units, int64_t inner,
                              float threshold, float floor_at, float ceiling_at, int want_abs, int want_floor,
                              int want_ceiling, int threads, int64_t min_per_thread, const int64_t *rows,
                              double *acc_sums, double *acc_observations, double *acc_minimum,
                              double *acc_maximum) {
    if (act != 0 && act != 1) return -2;
    const int variant = (want_abs ? 4 : 0) | (want_floor ? 2 : 0) | (want_ceiling ? 1 : 0);
    job_t job = {.x = x, .units = units, .inner = inner, .threshold = threshold, .floor_at = floor_at,
                 .ceiling_at = ceiling_at, .want_abs = want_abs, .want_floor = want_floor,
                 .want_ceiling = want_ceiling, .out = out, .low = low, .high = high, .slopes = slopes,
                 .slope_per_unit = slope_per_unit};
    return drive(ACTIVATIONS[act][from_input ? 1 : 0][variant], &job, outer, threads, min_per_thread, rows,
                 acc_sums, acc_observations, acc_minimum, acc_maximum);
}

/* ---- The entry points deadrelu.fused calls: a site's constants in one struct. ----

   A site calls the kernel once per forward pass with the same two dozen constants (its
   thresholds, its accumulators' addresses...): passed one by one through ctypes they cost
   ~2.5 us a call, more than the kernel itself on a small activation. deadrelu.fused fills a
   deadrelu_call_t once per site and plan (ctypes.Structure CallConstants, the same layout) and
   each call passes its address and what changes per call. */

typedef struct {
    int32_t act, slope_per_unit, from_input, want_abs, want_floor, want_ceiling;
    float low, high, threshold, floor_at, ceiling_at;
    const float *slopes;
    int64_t units, min_per_thread;
    const int64_t *rows;
    double *acc_sums, *acc_observations, *acc_minimum, *acc_maximum;
} deadrelu_call_t;

/* deadrelu_fused_update with the site's constants from `call` (act, low, high, slopes,
   slope_per_unit and from_input unused). */
int deadrelu_fused_update_call(const deadrelu_call_t *call, const float *x, const void *a, int a_mode,
                               int64_t outer, int64_t inner, int threads) {
    return deadrelu_fused_update(x, a, a_mode, outer, call->units, inner, call->threshold, call->floor_at,
                                 call->ceiling_at, call->want_abs, call->want_floor, call->want_ceiling, threads,
                                 call->min_per_thread, call->rows, call->acc_sums, call->acc_observations,
                                 call->acc_minimum, call->acc_maximum);
}

/* deadrelu_fused_activation with the site's constants from `call`. */
int deadrelu_fused_activation_call(const deadrelu_call_t *call, const float *x, float *out, int64_t outer,
                                   int64_t inner, int threads) {
    return deadrelu_fused_activation(x, out, call->act, call->low, call->high, call->slopes, call->slope_per_unit,
                                     call->from_input, outer, call->units, inner, call->threshold, call->floor_at,
                                     call->ceiling_at, call->want_abs, call->want_floor, call->want_ceiling,
                                     threads, call->min_per_thread, call->rows, call->acc_sums,
                                     call->acc_observations, call->acc_minimum, call->acc_maximum);
}

/* The version of deadrelu_fused_activation's arguments (DEADRELU_ACTIVATION_ABI). */
int deadrelu_fused_activation_abi(void) { return DEADRELU_ACTIVATION_ABI; }

/* The version of the arguments above this library was built for (DEADRELU_FUSED_ABI). */
int deadrelu_fused_abi(void) { return DEADRELU_FUSED_ABI; }
