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
//
// Your part: the bodies of kernels 2, 4 and 5 (search for TODO). Kernels 0, 1, 3 and the launcher are given.

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
// Kernel 1 moves 4 bytes per thread per instruction; move 16. float4 is a built-in 16-byte type
// (fields .x .y .z .w); a float4 load or store is one instruction, and the launcher guarantees that
// src and dst are 16-byte aligned.
extern "C" __global__ void copy_vectorized(const float* __restrict__ src, float* __restrict__ dst, long long n) {
    // TODO(lab01, kernel 2): launched with THREADS = 256 threads per block, at most 8 blocks per SM.
    //   1. n4 = n / 4 whole float4s; view src and dst as float4 (reinterpret_cast<const float4*>(src)).
    //   2. Grid-stride loop over i < n4 (i starts at the global thread index, steps by
    //      gridDim.x * blockDim.x; use long long: n can exceed 2^31): dst4[i] = src4[i].
    //   3. The tail: the last n % 4 floats (0 to 3 of them) start at 4 * n4; let threads 0, 1, 2 of the
    //      grid copy one each. n = 1, 2, 3 is all tail; n = 5 is one float4 and one float.
    //   Then tune (the notebook measures GB/s): with one float4 per step a thread has 16 bytes in flight;
    //   load 2-4 independent float4s per step (all the loads, then all the stores) so that more bytes are
    //   in flight per SM. Target: >= 85% of torch's device-to-device copy.
    LAB_TODO("lab01: kernel 2 copy_vectorized is not written yet (gpu_kernels.cu)");
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
// Kernel 3 ends with one atomic per thread. Add the block's 256 partial sums on chip first, then make
// one atomic per block.
extern "C" __global__ void reduce_sum_smem(const float* __restrict__ x, float* out, long long n) {
    // TODO(lab01, kernel 4): launched with THREADS = 256 threads per block; *out is zeroed by the launcher.
    //   1. __shared__ float partial[THREADS];
    //   2. each thread: acc = sum of x[i] over its grid-stride slice (as kernel 3), partial[tid] = acc.
    //   3. __syncthreads(); then for s = THREADS / 2, THREADS / 4, ..., 1:
    //        if (tid < s) partial[tid] += partial[tid + s];   __syncthreads();
    //      (the barrier sits outside the if: every thread of the block must reach it).
    //   4. thread 0: atomicAdd(out, partial[0]).
    LAB_TODO("lab01: kernel 4 reduce_sum_smem is not written yet (gpu_kernels.cu)");
}

// ---- kernel 5: warp shuffles ---------------------------------------------------------------------
// The 32 lanes of a warp can read each other's registers: v += __shfl_down_sync(FULL_MASK, v, offset)
// adds lane (lane + offset)'s v to this lane's. Offsets 16, 8, 4, 2, 1 leave the warp's sum in lane 0,
// with no shared memory and no barrier. (You may add a __device__ helper above this kernel.)
extern "C" __global__ void reduce_sum_shfl(const float* __restrict__ x, float* out, long long n) {
    // TODO(lab01, kernel 5): launched with THREADS = 256 threads (WARPS = 8 warps) per block.
    //   1. Grid-stride loop over x summing into a float register, as in kernel 4.
    //   2. Reduce within each warp with __shfl_down_sync (offsets 16 down to 1).
    //   3. __shared__ float warp_sums[WARPS]; lane 0 of warp w stores warp_sums[w]; __syncthreads();
    //   4. warp 0 loads warp_sums[lane] (0.f for lanes >= WARPS), reduces with shuffles again, and
    //      lane 0 does atomicAdd(out, block_sum).
    //   Target: >= 0.9x torch.sum on 64 Mi floats. (Measured on an H100: kernel 4's plain loop reaches
    //   1.0x torch.sum. Is a float4 loop faster? Try it; ncu tells you why or why not.)
    LAB_TODO("lab01: kernel 5 reduce_sum_shfl is not written yet (gpu_kernels.cu)");
}
