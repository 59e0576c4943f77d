// A process-wide cache of large 64-byte-aligned buffers, for the packed weights of each call.
//
// Packed weights are as large as the kernel (32 MiB for a 4x4 layer of 1024 x 512 channels). glibc serves
// allocations from 32 MiB up with a fresh mmap, so every call faulted in and zeroed every page again, a good part
// of such a layer's forward (benchmarks/NOTES.md). A finished call hands its buffer back here and the next call of
// a similar size takes it. Small buffers go straight to the allocator.
#ifndef JAXSEG_CPU_BUFFER_CACHE_H_
#define JAXSEG_CPU_BUFFER_CACHE_H_

#include <cstdint>
#include <memory>

namespace jaxseg::cpu {

// What the cache may hold between calls, in all and per buffer count.
inline constexpr int64_t kBufferCacheBytes = int64_t{256} << 20;
inline constexpr int kBufferCacheCount = 8;
// Buffers below this size are not cached.
inline constexpr int64_t kBufferCacheMinBytes = int64_t{1} << 20;

struct CachedBufferRelease {
  int64_t capacity = 0;
  void operator()(void* p) const;
};
using CachedBuffer = std::unique_ptr<void, CachedBufferRelease>;

// A buffer of at least `bytes` (null when memory runs out). Its contents are undefined.
CachedBuffer AcquireBuffer(int64_t bytes);

// Frees every cached buffer (tests, and users who want the memory back).
void ClearBufferCache();

// Bytes held by the cache now.
int64_t BufferCacheBytes();

}  // namespace jaxseg::cpu

#endif  // JAXSEG_CPU_BUFFER_CACHE_H_
