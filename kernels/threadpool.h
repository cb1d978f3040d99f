// One persistent thread pool for every kernel: workers are created once (lazily, or by set_num_threads)
// and reused, so no kernel call creates threads. The calling thread always does a share of the work.
#pragma once

#include <cstdint>
#include <functional>

namespace le {

// Threads used by parallel_for, the calling thread included. Default: physical cores this process may run on.
int get_num_threads();
// n >= 1; replaces the workers (waits for any running parallel_for first). Throws std::invalid_argument.
void set_num_threads(int n);
// Physical cores available to this process (hyperthread siblings counted once); at least 1.
int physical_cores();

// fn(begin, end) over [0, n_items) split into contiguous chunks (a few per thread, and no more than
// ceil(n_items / min_chunk) of them); the calling thread runs chunks too. Chunk bounds depend only on
// n_items, min_chunk and the thread count; which thread runs a chunk does not matter. Returns when every
// chunk is done; rethrows the first exception a chunk threw. Calls from several threads are serialised; a
// call from inside a chunk runs inline on that thread (no nested parallelism, no deadlock).
void parallel_for(int64_t n_items, const std::function<void(int64_t begin, int64_t end)>& fn, int64_t min_chunk = 1);

}  // namespace le
