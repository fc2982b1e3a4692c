// Lab 01, CUDA part: the programming model on the two simplest memory-bound kernels, a copy and a sum.
//
// Every kernel here reads (and maybe writes) each byte once and does almost no arithmetic, so its only
// job is to keep HBM busy: its speed is bytes / time against the device's copy rate. Run them through
// the given launcher, which compiles this file with NVRTC via CuPy and picks the launch shape:
//     from cuda_launch import copy, reduce_sum
//     y = copy(x, kernel="copy_vectorized");  s = reduce_sum(x, kernel="reduce_sum_shfl")
// Compile check (any machine with nvcc, no GPU needed):
//     nvcc -arch=sm_90 -std=c++17 -ptx gpu_kernels.cu -o /dev/null
// Grade: labs grade lab01
//
// Launch shape (cuda_launch.py): 1-D grids of THREADS = 256 threads per block, at most
// BLOCKS_PER_SM = 8 blocks per SM (8 x 256 = 2048 threads: a full H100 SM). Every kernel is a
// grid-stride loop, so it is correct for ANY grid: thread t of the whole grid handles items
// t, t + stride, t + 2 * stride, ... with stride = gridDim.x * blockDim.x.
//
// kernel 0  thread_coords      (given) each thread writes where it runs: block, thread, warp, lane, SM
// kernel 1  copy_scalar        (given) one float (4 bytes) per thread per step
// kernel 2  copy_vectorized    (you)   one float4 (16 bytes) per access; the n % 4 tail floats on the side
// kernel 3  reduce_sum_atomic  (given) a sum in each thread's register, then one atomicAdd per thread
// kernel 4  reduce_sum_smem    (you)   block-wide tree reduction in shared memory, one atomicAdd per block
// kernel 5  reduce_sum_shfl    (you)   warp shuffles inside each warp, shared memory across the 8 warps;
//                                      one atomicAdd per block
//
// Inputs are fp32, contiguous, 16-byte aligned (the launcher checks), of any length n >= 1; sums are
// accumulated in fp32. No system headers: NVRTC compiles this file without them.

// A TODO left in a kernel: the launcher refuses to run a kernel whose body still contains one.
#define LAB_TODO(msg) return

#define THREADS 256                 // threads per block (cuda_launch.THREADS); the reductions assume it
#define WARPS (THREADS / 32)        // 8 warps per block
#define FULL_MASK 0xffffffffu       // all 32 lanes of a warp take part in a shuffle

// ---- kernel 0 ------------------------------------------------------------------------------------
// out: (gridDim.x * blockDim.x, 6) int32. %smid is the SM the block was scheduled on (read through PTX).
extern "C" __global__ void thread_coords(int* out) {
    const int gid = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned int sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    int* row = out + (long long)gid * 6;
    row[0] = blockIdx.x;
    row[1] = threadIdx.x;
    row[2] = threadIdx.x / 32;      // warp within the block
    row[3] = threadIdx.x % 32;      // lane within the warp
    row[4] = gid;                   // global thread index
    row[5] = (int)sm;
}

// ---- kernel 1 ------------------------------------------------------------------------------------
// Coalesced (a warp reads 32 consecutive floats = 128 bytes per instruction) but each thread has only 4
// bytes in flight per step: 2048 threads x 4 B = 8 KB per SM, while hiding ~600 ns of HBM latency at
// 3.35 TB/s over 132 SMs takes ~15 KB per SM.
extern "C" __global__ void copy_scalar(const float* __restrict__ src, float* __restrict__ dst, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = src[i];
}

// ---- kernel 2: vectorized copy ---------------------------------------------------------------------
// The first 4 * (n / 4) floats move as float4 (one 16-byte load and store per access: 4x the bytes per
// instruction of kernel 1), UNROLL independent float4 per thread per step so that 64 bytes per thread are
// in flight; the last n % 4 floats (0 to 3) are copied one by one by the first threads of the grid.
#define COPY_UNROLL 4

extern "C" __global__ void copy_vectorized(const float* __restrict__ src, float* __restrict__ dst, long long n) {
    const long long n4 = n >> 2;                                    // whole float4s
    const float4* __restrict__ src4 = reinterpret_cast<const float4*>(src);
    float4* __restrict__ dst4 = reinterpret_cast<float4*>(dst);
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long gid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long i = gid;
    for (; i + (COPY_UNROLL - 1) * stride < n4; i += COPY_UNROLL * stride) {
        float4 v[COPY_UNROLL];
#pragma unroll
        for (int u = 0; u < COPY_UNROLL; ++u) v[u] = src4[i + u * stride];     // all loads first...
#pragma unroll
        for (int u = 0; u < COPY_UNROLL; ++u) dst4[i + u * stride] = v[u];     // ...then the stores
    }
    for (; i < n4; i += stride) dst4[i] = src4[i];                   // fewer than UNROLL steps left
    if (gid < (n & 3)) dst[(n4 << 2) + gid] = src[(n4 << 2) + gid];  // the tail
}

// ---- kernel 3 ------------------------------------------------------------------------------------
// Correct, and the reason the next two kernels exist: at full occupancy 132 x 2048 = 270k threads each
// issue an atomicAdd to the same address, and the L2 serializes them.
extern "C" __global__ void reduce_sum_atomic(const float* __restrict__ x, float* out, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    float acc = 0.f;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) acc += x[i];
    atomicAdd(out, acc);
}

// ---- kernel 4: shared-memory tree ----------------------------------------------------------------
// Each thread sums its grid-stride slice into a register, the block adds its 256 partial sums in
// shared memory by halving (128 adders, then 64, ..., then 1; a barrier between levels), and thread 0
// adds the block's sum to *out: gridDim.x atomics instead of 270k.
extern "C" __global__ void reduce_sum_smem(const float* __restrict__ x, float* out, long long n) {
    __shared__ float partial[THREADS];
    const int tid = threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    float acc = 0.f;
    for (long long i = (long long)blockIdx.x * blockDim.x + tid; i < n; i += stride) acc += x[i];
    partial[tid] = acc;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) partial[tid] += partial[tid + s];
        __syncthreads();                       // level k must be complete before level k + 1 reads it
    }
    if (tid == 0) atomicAdd(out, partial[0]);
}

// ---- kernel 5: warp shuffles ---------------------------------------------------------------------
// The 32 lanes of a warp exchange registers directly: after the 5 steps of shfl_down (offsets 16, 8,
// 4, 2, 1) lane 0 holds the warp's sum, with no shared memory and no barrier. Lane 0 of each of the 8
// warps writes its sum to shared memory; one barrier; warp 0 reduces those 8 the same way.
__device__ __forceinline__ float warp_reduce_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(FULL_MASK, v, offset);
    return v;
}

extern "C" __global__ void reduce_sum_shfl(const float* __restrict__ x, float* out, long long n) {
    __shared__ float warp_sums[WARPS];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const long long stride = (long long)gridDim.x * blockDim.x;
    float acc = 0.f;
    // The same plain loop as kernel 4: 0.99-1.01x torch.sum on an H100 (BENCHMARKS.md). A float4 loop
    // with #pragma unroll 4 once measured 0.29x, in a run that launch overhead later turned out to have
    // disturbed (the launcher re-parsed this file per call); it has not been re-measured since.
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) acc += x[i];
    acc = warp_reduce_sum(acc);
    if (lane == 0) warp_sums[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = warp_reduce_sum(lane < WARPS ? warp_sums[lane] : 0.f);
        if (lane == 0) atomicAdd(out, acc);
    }
}
