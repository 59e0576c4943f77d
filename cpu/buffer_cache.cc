#include "cpu/buffer_cache.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace jaxseg::cpu {
namespace {

struct Entry {
  void* data;
  int64_t capacity;
};

struct Cache {
  std::mutex mu;
  std::vector<Entry> free;  // most recently returned last
  int64_t bytes = 0;
};

Cache& TheCache() {
  // Never destroyed: calls may still return buffers while the process exits.
  static Cache* cache = new Cache;
  return *cache;
}

int64_t RoundUp(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

}  // namespace

void CachedBufferRelease::operator()(void* p) const {
  if (!p) return;
  if (capacity < kBufferCacheMinBytes || capacity > kBufferCacheBytes) {
    std::free(p);
    return;
  }
  Cache& c = TheCache();
  std::vector<void*> evicted;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    c.free.push_back({p, capacity});
    c.bytes += capacity;
    // Over the limits: drop the least recently returned.
    while (c.bytes > kBufferCacheBytes || static_cast<int>(c.free.size()) > kBufferCacheCount) {
      evicted.push_back(c.free.front().data);
      c.bytes -= c.free.front().capacity;
      c.free.erase(c.free.begin());
    }
  }
  for (void* e : evicted) std::free(e);
}

CachedBuffer AcquireBuffer(int64_t bytes) {
  const int64_t capacity = RoundUp(std::max<int64_t>(bytes, 64), 64);
  if (capacity >= kBufferCacheMinBytes) {
    Cache& c = TheCache();
    std::lock_guard<std::mutex> lock(c.mu);
    // The smallest buffer that fits, if it is not more than twice the size asked for.
    auto best = c.free.end();
    for (auto it = c.free.begin(); it != c.free.end(); ++it)
      if (it->capacity >= capacity && it->capacity <= 2 * capacity &&
          (best == c.free.end() || it->capacity < best->capacity))
        best = it;
    if (best != c.free.end()) {
      const Entry e = *best;
      c.free.erase(best);
      c.bytes -= e.capacity;
      return CachedBuffer(e.data, CachedBufferRelease{e.capacity});
    }
  }
  return CachedBuffer(std::aligned_alloc(64, static_cast<size_t>(capacity)), CachedBufferRelease{capacity});
}

void ClearBufferCache() {
  Cache& c = TheCache();
  std::vector<Entry> all;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    all.swap(c.free);
    c.bytes = 0;
  }
  for (const Entry& e : all) std::free(e.data);
}

int64_t BufferCacheBytes() {
  Cache& c = TheCache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.bytes;
}

}  // namespace jaxseg::cpu
