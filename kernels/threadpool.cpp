// The thread pool behind parallel_for. Workers spin briefly after a job (decode issues kernels back to back,
// so the next job usually arrives within microseconds), then sleep on a condition variable.
//
// Chunks are claimed, not assigned. Each participant (the caller is participant 0) owns a contiguous run of
// chunks and claims them from its front, in order; once its run is empty it steals from the back of the
// others' runs. So a thread reads one contiguous stretch of weights, whose prefetches (which run past a
// chunk's end) fetch what it reads next, while a thread the OS has not scheduled yet, or one slowed by a
// neighbour, has its share taken from the far end and never holds the caller up. The answer does not depend
// on who ran which chunk: chunk bounds are fixed by n_items and n_chunks alone.
//
// Protocol. Each run is an atomic packing (generation, front, back): chunks [front, back) are unclaimed. run()
// writes the job (fn_, n_items_, n_chunks_), stores the runs with a new generation, then publishes the
// generation in ticket_ (all release). A participant claims a chunk with a CAS on a run that only succeeds
// while the generation is the one it saw; only after a successful claim does it read the job, and it counts
// the chunk in `done_` (release) when finished. run() returns once done_ == n_chunks (acquire), so the job
// is never rewritten while a claimed chunk may still read it, and a worker that wakes late finds a stale
// generation or no chunk left and touches nothing.
#include "threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#include <unistd.h>

#include <fstream>
#endif

namespace le {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
}

// How long an idle thread polls before it sleeps; long enough to bridge the Python code between two
// kernel calls, short enough not to burn a core while the user reads the answer.
constexpr auto kSpinTime = std::chrono::microseconds(2000);

// Spins until pred() holds or kSpinTime passes; returns pred()'s last value. Yields between bursts, so on a
// busy machine the thread we wait for (or any other) can have this core.
template <class Pred>
bool spin_until(Pred pred) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
        for (int i = 0; i < 256; ++i) {
            if (pred()) return true;
            cpu_relax();
        }
        if (std::chrono::steady_clock::now() - start > kSpinTime) return pred();
        std::this_thread::yield();
    }
}

// Chunks per thread. A matmul ends when its last chunk does, so a thread that ran slower (a neighbour on the
// core, a busier memory channel) leaves the others idle for up to one chunk; since a thread's own chunks are
// contiguous, more of them cost no broken streams. 7B decode, 2 threads, runs of 16 vs 64 chunks each: the
// same within this machine's noise (Q4_0 +5.4% / +4.1%, Q4_K_M +1.6% / +3.1% over one shared queue of 16).
constexpr int64_t kChunksPerThread = 16;
constexpr int64_t kMaxChunks = 4095;  // fits a run's 12-bit fields

thread_local bool t_inside_pool = false;  // true on workers, and on a caller while it runs a job

class ThreadPool {
public:
    explicit ThreadPool(int n_threads) : n_threads_(n_threads), runs_(new std::atomic<uint64_t>[size_t(n_threads)]) {
        for (int i = 0; i < n_threads; ++i) runs_[i].store(0, std::memory_order_relaxed);
        workers_.reserve(size_t(n_threads - 1));
        for (int w = 1; w < n_threads; ++w) workers_.emplace_back([this, w] { worker_main(w); });
    }

    ~ThreadPool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        work_cv_.notify_all();
        for (auto& t : workers_) t.join();
    }

    int size() const { return n_threads_; }

    // Runs fn over [0, n) in n_chunks fixed chunks, 2 <= n_chunks <= kMaxChunks. Not reentrant: parallel_for
    // serialises callers.
    void run(int64_t n, int n_chunks, const std::function<void(int64_t, int64_t)>& fn) {
        fn_ = &fn;
        n_items_ = n;
        n_chunks_ = n_chunks;
        error_ = nullptr;
        done_.store(0, std::memory_order_relaxed);
        const uint64_t gen = (ticket_.load(std::memory_order_relaxed) + 1) & kGenMask;
        for (int i = 0; i < n_threads_; ++i) {
            const uint64_t front = uint64_t(n_chunks) * uint64_t(i) / uint64_t(n_threads_);
            const uint64_t back = uint64_t(n_chunks) * uint64_t(i + 1) / uint64_t(n_threads_);
            runs_[i].store(pack(gen, front, back), std::memory_order_release);
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);  // a worker about to sleep re-checks ticket_ under it
            ticket_.store(gen, std::memory_order_release);
        }
        work_cv_.notify_all();

        work_on(gen, 0);

        const auto all_done = [&] { return done_.load(std::memory_order_acquire) == n_chunks; };
        if (!spin_until(all_done)) {
            std::unique_lock<std::mutex> lock(mutex_);
            done_cv_.wait(lock, all_done);
        }
        fn_ = nullptr;
        if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    }

private:
    // A run: generation (40 bits) | front (12 bits) | back (12 bits); chunks [front, back) are unclaimed.
    static constexpr uint64_t kGenMask = (uint64_t(1) << 40) - 1;
    static constexpr uint64_t pack(uint64_t gen, uint64_t front, uint64_t back) {
        return gen << 24 | front << 12 | back;
    }
    static constexpr uint64_t generation(uint64_t r) { return r >> 24; }
    static constexpr int front(uint64_t r) { return int((r >> 12) & 0xfff); }
    static constexpr int back(uint64_t r) { return int(r & 0xfff); }

    // Claims the first (owner) or last (thief) unclaimed chunk of run i in generation gen; -1 if none is left.
    int claim(int i, uint64_t gen, bool owner) {
        uint64_t r = runs_[i].load(std::memory_order_acquire);
        for (;;) {
            if (generation(r) != gen || front(r) >= back(r)) return -1;
            const uint64_t next = owner ? r + (uint64_t(1) << 12) : r - 1;
            if (runs_[i].compare_exchange_weak(r, next, std::memory_order_acq_rel, std::memory_order_acquire))
                return owner ? front(r) : back(r) - 1;
        }
    }

    // Runs chunk c of the current job; false once the job's last chunk is done.
    bool run_chunk(int c) {
        const int n_chunks = n_chunks_;  // read before done_ counts this chunk: after that run() may move on
        const int64_t begin = n_items_ * c / n_chunks;
        const int64_t end = n_items_ * (c + 1) / n_chunks;
        try {
            (*fn_)(begin, end);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex_);
            if (!error_) error_ = std::current_exception();
        }
        if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_chunks) {
            // Under the mutex, so the notification cannot fall between the caller's check and its wait.
            std::lock_guard<std::mutex> lock(mutex_);
            done_cv_.notify_one();
            return false;
        }
        return true;
    }

    // Participant self's share of generation gen: its own run front to back, then the others' from their backs.
    void work_on(uint64_t gen, int self) {
        for (int c; (c = claim(self, gen, true)) >= 0;)
            if (!run_chunk(c)) return;
        for (int k = 1; k < n_threads_; ++k) {
            const int victim = (self + k) % n_threads_;
            for (int c; (c = claim(victim, gen, false)) >= 0;)
                if (!run_chunk(c)) return;
        }
    }

    void worker_main(int self) {
        t_inside_pool = true;
        uint64_t seen = 0;  // the generation at construction: a job published before this thread started still counts
        for (;;) {
            uint64_t gen = seen;
            const auto fresh = [&] { return (gen = ticket_.load(std::memory_order_acquire)) != seen; };
            if (!spin_until(fresh)) {
                std::unique_lock<std::mutex> lock(mutex_);
                work_cv_.wait(lock, [&] { return stop_ || fresh(); });
                if (stop_) return;
            }
            seen = gen;
            work_on(gen, self);
        }
    }

    const int n_threads_;
    std::vector<std::thread> workers_;

    std::mutex mutex_;  // guards stop_ and the sleeping side of both condition variables
    std::condition_variable work_cv_;
    std::condition_variable done_cv_;
    bool stop_ = false;
    std::atomic<uint64_t> ticket_{0};  // the current generation: what wakes the workers
    std::unique_ptr<std::atomic<uint64_t>[]> runs_;  // one run of chunks per participant
    std::atomic<int> done_{0};

    // The current job; read only by a participant holding a claimed chunk (see the protocol above).
    const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
    int64_t n_items_ = 0;
    int n_chunks_ = 0;

    std::mutex error_mutex_;
    std::exception_ptr error_;
};

std::mutex g_pool_mutex;  // held for the whole of a parallel_for, and by set_num_threads
// Never deleted at exit: joining workers from static destructors races interpreter shutdown. Reachable
// through this pointer, so leak checkers do not report it.
ThreadPool* g_pool = nullptr;
int g_pool_threads = 0;  // threads requested; the pool itself is created on first use
#if defined(__linux__)
pid_t g_pool_pid = 0;  // a forked child has no workers: it builds its own pool
#endif

int default_threads() { return physical_cores(); }

// Caller holds g_pool_mutex.
ThreadPool& pool_locked() {
    if (g_pool_threads == 0) g_pool_threads = default_threads();
#if defined(__linux__)
    if (g_pool && g_pool_pid != getpid()) g_pool = nullptr;  // parent's threads do not exist here: abandon it
#endif
    if (!g_pool || g_pool->size() != g_pool_threads) {
        delete g_pool;
        g_pool = nullptr;
        g_pool = new ThreadPool(g_pool_threads);
#if defined(__linux__)
        g_pool_pid = getpid();
#endif
    }
    return *g_pool;
}

}  // namespace

int physical_cores() {
    int n = 0;
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        std::set<std::pair<long, long>> cores;  // (package, core)
        bool topology_ok = true;
        for (int cpu = 0; cpu < CPU_SETSIZE && topology_ok; ++cpu) {
            if (!CPU_ISSET(cpu, &set)) continue;
            const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
            long package = -1, core = -1;
            std::ifstream p(dir + "physical_package_id"), c(dir + "core_id");
            if (!(p >> package) || !(c >> core)) topology_ok = false;
            cores.emplace(package, core);
        }
        n = topology_ok ? int(cores.size()) : CPU_COUNT(&set);
    }
#endif
    if (n <= 0) n = int(std::thread::hardware_concurrency());
    return std::max(n, 1);
}

int get_num_threads() {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    if (g_pool_threads == 0) g_pool_threads = default_threads();
    return g_pool_threads;
}

void set_num_threads(int n) {
    if (n < 1 || n > 1024)
        throw std::invalid_argument("set_num_threads: n must be in [1, 1024], got " + std::to_string(n));
    if (t_inside_pool) throw std::logic_error("set_num_threads: called from inside a parallel_for");
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    g_pool_threads = n;
    pool_locked();
}

void parallel_for(int64_t n_items, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk) {
    if (n_items <= 0) return;
    if (t_inside_pool) {  // nested: this thread already holds a share of an outer job
        fn(0, n_items);
        return;
    }
    struct InsidePool {  // also makes a nested call inline instead of re-locking g_pool_mutex
        InsidePool() { t_inside_pool = true; }
        ~InsidePool() { t_inside_pool = false; }
    };
    min_chunk = std::max<int64_t>(min_chunk, 1);
    const int64_t max_chunks = (n_items + min_chunk - 1) / min_chunk;
    std::unique_lock<std::mutex> lock(g_pool_mutex);
    ThreadPool& pool = pool_locked();
    // A few chunks per thread: a thread slowed down (a busy core, an efficiency core) hands its share on.
    const int n_chunks = int(std::min<int64_t>({int64_t(pool.size()) * kChunksPerThread, max_chunks, kMaxChunks}));
    InsidePool inside;
    if (pool.size() == 1 || n_chunks <= 1) {
        lock.unlock();  // nothing to share: let other callers use the pool meanwhile
        fn(0, n_items);
        return;
    }
    pool.run(n_items, n_chunks, fn);
}

}  // namespace le
