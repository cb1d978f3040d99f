// The thread pool behind parallel_for. Workers spin briefly after a job (decode issues kernels back to back,
// so the next job usually arrives within microseconds), then sleep on a condition variable.
//
// Publication protocol: run() writes the job fields, then bumps `generation_` (release, under `mutex_`);
// a worker that sees a new generation (acquire) reads the job, runs its chunk and decrements `pending_`
// (acq_rel). run() returns only when `pending_` reaches 0, so the job fields are never rewritten while a
// worker may still read them, and no worker can miss a generation.
#include "threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
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

// Spins until pred() holds or kSpinTime passes; returns pred()'s last value.
template <class Pred>
bool spin_until(Pred pred) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
        for (int i = 0; i < 256; ++i) {
            if (pred()) return true;
            cpu_relax();
        }
        if (std::chrono::steady_clock::now() - start > kSpinTime) return pred();
    }
}

thread_local bool t_inside_pool = false;  // true on workers, and on a caller while it runs a job

class ThreadPool {
public:
    explicit ThreadPool(int n_threads) : n_threads_(n_threads) {
        workers_.reserve(size_t(n_threads - 1));
        for (int w = 0; w < n_threads - 1; ++w) workers_.emplace_back([this, w] { worker_main(w + 1); });
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

    // Runs chunks [0, n_chunks) of fn over [0, n); 2 <= n_chunks <= size(). Not reentrant (callers serialise).
    void run(int64_t n, int n_chunks, const std::function<void(int64_t, int64_t)>& fn) {
        fn_ = &fn;
        n_items_ = n;
        n_chunks_ = n_chunks;
        error_ = nullptr;
        pending_.store(int(workers_.size()), std::memory_order_relaxed);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            generation_.fetch_add(1, std::memory_order_release);
        }
        work_cv_.notify_all();

        run_chunk(0);

        if (!spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; })) {
            std::unique_lock<std::mutex> lock(mutex_);
            done_cv_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
        }
        fn_ = nullptr;
        if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    }

private:
    void run_chunk(int chunk) {
        if (chunk >= n_chunks_) return;
        const int64_t begin = n_items_ * chunk / n_chunks_;
        const int64_t end = n_items_ * (chunk + 1) / n_chunks_;
        try {
            (*fn_)(begin, end);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex_);
            if (!error_) error_ = std::current_exception();
        }
    }

    void worker_main(int chunk) {
        t_inside_pool = true;
        uint64_t seen = 0;
        for (;;) {
            uint64_t gen = seen;
            if (!spin_until([&] { return (gen = generation_.load(std::memory_order_acquire)) != seen; })) {
                std::unique_lock<std::mutex> lock(mutex_);
                work_cv_.wait(lock, [&] {
                    gen = generation_.load(std::memory_order_acquire);
                    return stop_ || gen != seen;
                });
                if (stop_) return;
            }
            seen = gen;
            run_chunk(chunk);
            if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                // Under the mutex, so the notification cannot fall between the caller's check and its wait.
                std::lock_guard<std::mutex> lock(mutex_);
                done_cv_.notify_one();
            }
        }
    }

    const int n_threads_;
    std::vector<std::thread> workers_;

    std::mutex mutex_;  // guards stop_ and the sleeping side of both condition variables
    std::condition_variable work_cv_;
    std::condition_variable done_cv_;
    bool stop_ = false;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};

    // The current job; published through generation_, see the protocol at the top of the file.
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
    if (n < 1 || n > 1024) throw std::invalid_argument("set_num_threads: n must be in [1, 1024], got " + std::to_string(n));
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
    const int n_chunks = int(std::min<int64_t>(pool.size(), max_chunks));
    InsidePool inside;
    if (n_chunks <= 1) {
        lock.unlock();  // nothing to share: let other callers use the pool meanwhile
        fn(0, n_items);
        return;
    }
    pool.run(n_items, n_chunks, fn);
}

}  // namespace le
