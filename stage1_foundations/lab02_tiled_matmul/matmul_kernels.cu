// Lab 02, CUDA part: fp32 GEMM, C[M,N] = A[M,K] @ B[K,N], all row-major and contiguous.
//
// One file, four kernels, each a rung of the optimization ladder (llm.c style). Run them through the
// given launcher, which compiles this file with NVRTC via CuPy:
//     from cuda_matmul import matmul; c = matmul(a, b, kernel=3)        # or kernel="sgemm_smem_tiled"
// Compile check (any machine with nvcc, no GPU needed):
//     nvcc -arch=sm_90 -std=c++17 -ptx matmul_kernels.cu -o /dev/null
// Grade: labs grade lab02
//
// kernel 1  sgemm_naive             one thread per C element; threadIdx.x walks ROWS of C, so the 32
//                                   threads of a warp read 32 different rows of A: uncoalesced.
// kernel 2  sgemm_coalesced         threadIdx.x walks COLUMNS: a warp reads 32 consecutive floats of B
//                                   (one 128-byte transaction) and one broadcast float of A.
// kernel 3  sgemm_smem_tiled        (you) 32x32 tiles of A and B staged in shared memory: each float
//                                   loaded from HBM is used 32 times instead of once.
// kernel 4  sgemm_register_blocked  (you) a 128x128 tile per block, 8x8 outputs per thread held in
//                                   registers: each shared-memory load feeds 8 FMAs.
//
// No system headers: NVRTC compiles this file without them. Sizes need not be multiples of the tiles.
// Your part: the bodies of kernels 3 and 4 (search for TODO). The launcher, the dispatcher and
// kernels 1-2 are given.

// A TODO left in a kernel: the launcher refuses to run a kernel whose body still contains one.
#define LAB_TODO(msg) return

// ---- kernel 1 ------------------------------------------------------------------------------------
extern "C" __global__ void sgemm_naive(const float* A, const float* B, float* C, int M, int N, int K) {
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    const int col = blockIdx.y * blockDim.y + threadIdx.y;
    if (row < M && col < N) {
        float acc = 0.f;
        for (int k = 0; k < K; ++k) acc += A[(size_t)row * K + k] * B[(size_t)k * N + col];
        C[(size_t)row * N + col] = acc;
    }
}

// ---- kernel 2 ------------------------------------------------------------------------------------
extern "C" __global__ void sgemm_coalesced(const float* A, const float* B, float* C, int M, int N, int K) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (row < M && col < N) {
        float acc = 0.f;
        for (int k = 0; k < K; ++k) acc += A[(size_t)row * K + k] * B[(size_t)k * N + col];
        C[(size_t)row * N + col] = acc;
    }
}

// ---- kernel 3: shared-memory tiling ----------------------------------------------------------------
// Block (32, 32) computes the 32x32 tile of C at (blockIdx.y, blockIdx.x). Per K-step of 32, every
// thread loads one float of A and one of B into shared memory, then does 32 FMAs from shared memory.
// HBM traffic per block: 2 * 32 * K floats for 32 * 32 outputs, i.e. 32x less than kernel 2.
#define TILE 32
extern "C" __global__ void sgemm_smem_tiled(const float* A, const float* B, float* C, int M, int N, int K) {
    // TODO(lab02, kernel 3): launched with block (32, 32), grid (cdiv(N, 32), cdiv(M, 32)).
    //   1. __shared__ float As[TILE][TILE], Bs[TILE][TILE];
    //      row = blockIdx.y * TILE + threadIdx.y, col = blockIdx.x * TILE + threadIdx.x.
    //   2. for k0 in 0, TILE, 2*TILE, ... < K:
    //        each thread loads A[row, k0 + tx] into As[ty][tx] and B[k0 + ty, col] into Bs[ty][tx]
    //        (0.f when out of range, so the inner loop needs no checks);
    //        __syncthreads();  acc += As[ty][k] * Bs[k][tx] for k < TILE;  __syncthreads();
    //   3. if (row < M && col < N) C[row * N + col] = acc;
    // Why the second __syncthreads()? Without it a fast warp overwrites a tile another warp still reads.
    LAB_TODO("lab02: kernel 3 sgemm_smem_tiled is not written yet (matmul_kernels.cu)");
}

// ---- kernel 4: 2D register blocking --------------------------------------------------------------
// 256 threads compute a BM x BN = 128 x 128 tile of C; thread (tRow, tCol) owns an 8 x 8 sub-tile in
// registers. Per K-step of BK = 8: the block stages A[128 x 8] (stored transposed, As[k][m]) and
// B[8 x 128] in shared memory; each thread reads 8 values of A and 8 of B per k and does 64 FMAs.
// Shared-memory loads per FMA: 16 / 64 = 0.25 (kernel 3: 2 per FMA).
#define BM 128
#define BN 128
#define BK 8
#define TM 8
#define TN 8
#define NTHREADS ((BM / TM) * (BN / TN))   // 256

extern "C" __global__ void __launch_bounds__(NTHREADS)
sgemm_register_blocked(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                       int M, int N, int K) {
    // TODO(lab02, kernel 4): launched with 256 threads, grid (cdiv(N, BN), cdiv(M, BM)).
    //   Thread tid owns C[bRow + tRow*TM + i, bCol + tCol*TN + j] for i < TM, j < TN, with
    //   tRow = tid / (BN / TN), tCol = tid % (BN / TN), bRow = blockIdx.y * BM, bCol = blockIdx.x * BN.
    //   1. __shared__ float As[BK][BM] (A's tile stored transposed: As[k][m]) and Bs[BK][BN];
    //      float acc[TM][TN] = 0, regM[TM], regN[TN]  (index them only with unrolled, constant indices).
    //   2. for k0 in steps of BK: the 256 threads load the BM x BK tile of A (4 floats each) and the
    //      BK x BN tile of B (4 each, consecutive threads -> consecutive columns), 0.f out of range;
    //      __syncthreads();
    //      for k < BK: regM[i] = As[k][tRow*TM + i]; regN[j] = Bs[k][tCol*TN + j];
    //                  acc[i][j] += regM[i] * regN[j];          (64 FMAs per 16 shared loads)
    //      __syncthreads();
    //   3. write acc to C, skipping rows >= M and columns >= N.
    // Faster: read regM/regN as float4 (16-byte shared loads); check with nvcc -Xptxas -v that acc
    // stays in registers (0 bytes stack frame).
    LAB_TODO("lab02: kernel 4 sgemm_register_blocked is not written yet (matmul_kernels.cu)");
}
