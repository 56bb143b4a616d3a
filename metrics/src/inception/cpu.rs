//! CPU engine for the FID Inception: NHWC activations, convolutions as im2col + one `gemm` call
//! per row chunk, bias + ReLU fused into one pass over the freshly written rows.
//!
//! Why not candle's `conv2d` on CPU: it converts NCHW to NHWC and back around every layer
//! (serially) and packs the weights per 512-pixel tile, which leaves it at a fraction of its own
//! matmul speed. Here activations stay NHWC end to end, so:
//! * a 1x1 stride-1 convolution is a plain GEMM on the activation buffer, no copy at all;
//! * the 1x1 convolutions of a mixed block that read the same input run as *one* GEMM with
//!   their weight matrices concatenated along the output axis;
//! * every branch writes straight into its channel range of the block output (GEMM with a row
//!   stride), so the channel concatenation costs nothing;
//! * the batch is split across threads image-wise (each thread runs the whole network on its
//!   share, single-threaded GEMMs, no synchronisation between layers); with fewer images than
//!   threads the GEMMs themselves run in parallel instead.

use super::network::{
    layer_geometry, BlockKind, NetOutput, BLOCKS, INPUT_SIZE, LAYERS, LOGITS_DIM, POOL3_DIM, SPATIAL_CHANNELS, SPATIAL_DIM,
    SPATIAL_TAP_BLOCK,
};
use super::weights::FoldedWeights;
use super::winograd;
use super::winograd_1d::{self, Winograd1d};
use anyhow::{anyhow, bail, Result};
use gemm::Parallelism;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static PROFILING: AtomicBool = AtomicBool::new(false);
static PROFILE: Mutex<BTreeMap<String, ProfileEntry>> = Mutex::new(BTreeMap::new());

/// Accumulated cost of one named operation: thread time, calls, multiply-adds (convolutions).
#[derive(Clone, Debug, Default)]
pub struct ProfileEntry {
    pub time: Duration,
    pub calls: usize,
    pub macs: u64,
}

/// Turns per-operation timing on or off (for `genbench bench inception --profile`). Times are
/// summed over threads, so with image-parallel batches they are thread-seconds.
pub fn set_profiling(on: bool) {
    PROFILING.store(on, Ordering::Relaxed);
}

/// The per-operation times recorded since the last call, largest first, and clears them.
pub fn take_profile() -> Vec<(String, ProfileEntry)> {
    let mut m = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = std::mem::take(&mut *m).into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1.time));
    v
}

/// CPU time of the calling thread (Linux `schedstat`: nanoseconds on a CPU), so a profile taken
/// on a busy machine still shows what each operation costs. Falls back to wall time elsewhere.
fn thread_cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

/// Runs `f`, charging its (thread CPU) time to `what` when profiling is on.
fn timed<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    timed_macs(what, 0, f)
}

/// As [`timed`], also charging `macs` multiply-adds, for a GMAC/s column.
fn timed_macs<T>(what: impl FnOnce() -> String, macs: u64, f: impl FnOnce() -> T) -> T {
    if !PROFILING.load(Ordering::Relaxed) {
        return f();
    }
    let (c0, t0) = (thread_cpu_time(), Instant::now());
    let out = f();
    let dt = match (c0, thread_cpu_time()) {
        // With intra-op parallelism the other threads' work is not on this thread's clock.
        (Some(a), Some(b)) if rayon::current_thread_index().is_some() => b.saturating_sub(a),
        _ => t0.elapsed(),
    };
    let mut m = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
    let e = m.entry(what()).or_default();
    e.time += dt;
    e.calls += 1;
    e.macs += macs;
    out
}

/// im2col rows are produced in chunks of about this many floats (2 MiB): large enough that the
/// weight packing inside each GEMM call is amortised over hundreds of rows (>= 128 for the widest
/// layer, K = 3*3*448), small enough to stay mostly in the L2/L3 caches. Measured: 0.5, 2 and 8 MiB
/// give the same speed within noise, so the middle is kept.
const IM2COL_CHUNK_FLOATS: usize = 1 << 19;

/// Images that go through the layers together on one thread. Larger groups make every
/// activation (and the 147x147x64 ones are 5.5 MB per image) fall out of the caches between
/// layers: `genbench bench inception` at batch 64 (32 images per thread) ran 18.0 img/s in one
/// pass, 22.6-23.1 in passes of 8 and 23.9-24.0 in passes of 4; at batch 16, 23.2-24.4 (8),
/// 24.0-24.2 (4) and 23.7-24.0 (2).
const IMAGES_PER_PASS: usize = 4;

/// A convolution laid out for NHWC GEMM: weights as a [K, Cout] matrix with
/// K = (ky, kx, cin) in that order, matching the im2col row layout.
pub(crate) struct GemmConv {
    kh: usize,
    kw: usize,
    stride: usize,
    pad_h: usize,
    pad_w: usize,
    cin: usize,
    cout: usize,
    w_kn: Vec<f32>,
    bias: Vec<f32>,
    /// The filters in Winograd F(4x4, 3x3) or F(2x2, 5x5) form, for the layers that can take
    /// that route.
    winograd_u: Option<Vec<f32>>,
    /// The layer in one-dimensional Winograd F(m, r) form, for the 1xr / rx1 layers.
    winograd_1d: Option<Winograd1d>,
}

impl GemmConv {
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad_h == 0 && self.pad_w == 0
    }

    /// Multiply-adds of one application to n images of h x w.
    fn macs(&self, n: usize, h: usize, w: usize) -> u64 {
        let (ho, wo) = self.out_size(h, w);
        (n * ho * wo * self.kh * self.kw * self.cin * self.cout) as u64
    }

    fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        ((h + 2 * self.pad_h - self.kh) / self.stride + 1, (w + 2 * self.pad_w - self.kw) / self.stride + 1)
    }

    /// Concatenates 1x1 convolutions that read the same input into one (outputs side by side).
    fn concat_pointwise(parts: &[&GemmConv]) -> Result<GemmConv> {
        let cin = parts[0].cin;
        if parts.iter().any(|p| !p.is_pointwise() || p.cin != cin) {
            bail!("only 1x1 convolutions over the same input can be fused");
        }
        let cout: usize = parts.iter().map(|p| p.cout).sum();
        let mut w_kn = vec![0f32; cin * cout];
        let mut col = 0;
        for p in parts {
            for k in 0..cin {
                w_kn[k * cout + col..k * cout + col + p.cout].copy_from_slice(&p.w_kn[k * p.cout..(k + 1) * p.cout]);
            }
            col += p.cout;
        }
        let bias = parts.iter().flat_map(|p| p.bias.iter().copied()).collect();
        Ok(GemmConv { kh: 1, kw: 1, stride: 1, pad_h: 0, pad_w: 0, cin, cout, w_kn, bias, winograd_u: None, winograd_1d: None })
    }
}

/// An NHWC activation: `n` images of `h`x`w` pixels with `c` channels each.
struct Act {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    data: Vec<f32>,
}

impl Act {
    fn zeros(n: usize, h: usize, w: usize, c: usize) -> Self {
        Act { n, h, w, c, data: vec![0f32; n * h * w * c] }
    }
    fn view(&self, off: usize, c: usize) -> View<'_> {
        debug_assert!(off + c <= self.c);
        View { data: &self.data, stride: self.c, off, c, n: self.n, h: self.h, w: self.w }
    }
    fn all(&self) -> View<'_> {
        self.view(0, self.c)
    }
}

/// Channels `off..off+c` of an NHWC buffer whose pixels are `stride` floats apart.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    stride: usize,
    off: usize,
    c: usize,
    n: usize,
    h: usize,
    w: usize,
}

/// Destination channels `off..off+c` of an NHWC buffer with `stride` floats per pixel.
struct Dst<'a> {
    data: &'a mut [f32],
    stride: usize,
    off: usize,
}

/// Runs one convolution (+bias+ReLU) from `x` into `dst`, which must hold n*ho*wo pixels.
fn conv_into(layer: &GemmConv, x: View, dst: Dst, par: Parallelism) -> Result<()> {
    if x.c != layer.cin {
        bail!("convolution expects {} input channels, got {}", layer.cin, x.c);
    }
    let (ho, wo) = layer.out_size(x.h, x.w);
    let m = x.n * ho * wo;
    let k = layer.kh * layer.kw * layer.cin;
    let n_out = layer.cout;
    if dst.data.len() < (m - 1) * dst.stride + dst.off + n_out {
        bail!("convolution output buffer too small");
    }
    if let Some(u) = layer.winograd_u.as_ref().filter(|_| winograd::map_large_enough(ho, wo)) {
        let input = winograd::Input { data: x.data, stride: x.stride, off: x.off, n: x.n, h: x.h, w: x.w };
        let output = winograd::Output { data: dst.data, stride: dst.stride, off: dst.off };
        winograd::conv_bias_relu(input, layer.kh, layer.pad_h, u, &layer.bias, layer.cin, n_out, output, par);
        return Ok(());
    }
    if let Some(line) = layer.winograd_1d.as_ref() {
        let input = winograd::Input { data: x.data, stride: x.stride, off: x.off, n: x.n, h: x.h, w: x.w };
        let output = winograd::Output { data: dst.data, stride: dst.stride, off: dst.off };
        winograd_1d::conv_bias_relu(line, input, &layer.bias, layer.cin, n_out, output, par);
        return Ok(());
    }
    let chunk_rows = if layer.is_pointwise() { m } else { (IM2COL_CHUNK_FLOATS / k).clamp(64, m.max(64)) };
    let mut cols: Vec<f32> = Vec::new();
    let mut r0 = 0;
    while r0 < m {
        let rows = chunk_rows.min(m - r0);
        let (lhs, lhs_rs) = if layer.is_pointwise() {
            (x.data[r0 * x.stride + x.off..].as_ptr(), x.stride)
        } else {
            cols.resize(rows * k, 0.0);
            im2col(layer, &x, ho, wo, r0, &mut cols[..rows * k], par);
            (cols.as_ptr(), k)
        };
        let out = &mut dst.data[r0 * dst.stride + dst.off..];
        // SAFETY: `lhs` addresses rows*K floats with row stride lhs_rs inside `x.data` or `cols`
        // (checked by construction above), `w_kn` is K x Cout row-major, and `out` holds
        // (rows-1)*stride + Cout floats (checked against dst.data.len() above).
        unsafe {
            gemm::gemm(
                rows,
                n_out,
                k,
                out.as_mut_ptr(),
                1,
                dst.stride as isize,
                false,
                lhs,
                1,
                lhs_rs as isize,
                layer.w_kn.as_ptr(),
                1,
                n_out as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        bias_relu(out, rows, dst.stride, &layer.bias, par);
        r0 += rows;
    }
    Ok(())
}

fn bias_relu(out: &mut [f32], rows: usize, stride: usize, bias: &[f32], par: Parallelism) {
    let n = bias.len();
    let apply = |row: &mut [f32]| {
        for (v, b) in row[..n].iter_mut().zip(bias) {
            *v = (*v + b).max(0.0);
        }
    };
    let span = (rows - 1) * stride + n;
    let out = &mut out[..span];
    match par {
        Parallelism::Rayon(t) if t > 1 => {
            // Rows are `stride` apart: split on whole strides; the last row is shorter.
            out.par_chunks_mut(stride).for_each(apply);
        }
        _ => out.chunks_mut(stride).for_each(apply),
    }
}

/// Writes the im2col rows `r0..r0+rows` of output pixels into `cols` (rows x K).
fn im2col(layer: &GemmConv, x: &View, ho: usize, wo: usize, r0: usize, cols: &mut [f32], par: Parallelism) {
    let k = layer.kh * layer.kw * layer.cin;
    let cin = layer.cin;
    let fill = |r: usize, row: &mut [f32]| {
        let idx = r0 + r;
        let img = idx / (ho * wo);
        let oy = (idx / wo) % ho;
        let ox = idx % wo;
        for ky in 0..layer.kh {
            let iy = (oy * layer.stride + ky) as isize - layer.pad_h as isize;
            let seg = &mut row[ky * layer.kw * cin..(ky + 1) * layer.kw * cin];
            if iy < 0 || iy >= x.h as isize {
                seg.fill(0.0);
                continue;
            }
            for kx in 0..layer.kw {
                let ix = (ox * layer.stride + kx) as isize - layer.pad_w as isize;
                let d = &mut seg[kx * cin..(kx + 1) * cin];
                if ix < 0 || ix >= x.w as isize {
                    d.fill(0.0);
                } else {
                    let p = ((img * x.h + iy as usize) * x.w + ix as usize) * x.stride + x.off;
                    d.copy_from_slice(&x.data[p..p + cin]);
                }
            }
        }
    };
    match par {
        Parallelism::Rayon(t) if t > 1 => cols.par_chunks_mut(k).enumerate().for_each(|(r, row)| fill(r, row)),
        _ => cols.chunks_mut(k).enumerate().for_each(|(r, row)| fill(r, row)),
    }
}

/// 3x3 max pool with the given stride and padding (0 or 1) into `dst`.
fn max_pool3(x: View, stride: usize, pad: usize, dst: Dst) {
    let ho = (x.h + 2 * pad - 3) / stride + 1;
    let wo = (x.w + 2 * pad - 3) / stride + 1;
    let c = x.c;
    for img in 0..x.n {
        for oy in 0..ho {
            for ox in 0..wo {
                let o = ((img * ho + oy) * wo + ox) * dst.stride + dst.off;
                let out = &mut dst.data[o..o + c];
                out.fill(f32::NEG_INFINITY);
                for ky in 0..3 {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy >= x.h as isize {
                        continue;
                    }
                    for kx in 0..3 {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if ix < 0 || ix >= x.w as isize {
                            continue;
                        }
                        let p = ((img * x.h + iy as usize) * x.w + ix as usize) * x.stride + x.off;
                        for (o, v) in out.iter_mut().zip(&x.data[p..p + c]) {
                            *o = o.max(*v);
                        }
                    }
                }
            }
        }
    }
}

/// 3x3 average pool, stride 1, padding 1, dividing by the count of non-padded elements (TF SAME
/// average pooling; PyTorch `count_include_pad=False`).
fn avg_pool3_exclude_pad(x: View) -> Act {
    let mut out = Act::zeros(x.n, x.h, x.w, x.c);
    let c = x.c;
    for img in 0..x.n {
        for oy in 0..x.h {
            for ox in 0..x.w {
                let o = ((img * x.h + oy) * x.w + ox) * c;
                let acc = &mut out.data[o..o + c];
                let mut count = 0usize;
                for iy in oy.saturating_sub(1)..(oy + 2).min(x.h) {
                    for ix in ox.saturating_sub(1)..(ox + 2).min(x.w) {
                        let p = ((img * x.h + iy) * x.w + ix) * x.stride + x.off;
                        for (a, v) in acc.iter_mut().zip(&x.data[p..p + c]) {
                            *a += v;
                        }
                        count += 1;
                    }
                }
                let inv = 1.0 / count as f32;
                acc.iter_mut().for_each(|a| *a *= inv);
            }
        }
    }
    out
}

/// The whole network, laid out for the NHWC engine.
pub struct GemmInception {
    convs: HashMap<&'static str, GemmConv>,
    /// Per block: its 1x1 convolutions over the block input fused into one.
    fused: HashMap<&'static str, GemmConv>,
    /// [1008, 2048] row-major classifier weight.
    fc: Option<Vec<f32>>,
}

/// The 1x1 layers of each block kind that read the block input, in output-column order.
fn pointwise_heads(kind: BlockKind) -> &'static [&'static str] {
    match kind {
        BlockKind::A => &["conv", "tower.conv", "tower_1.conv"],
        BlockKind::B => &["tower.conv"],
        BlockKind::C => &["conv", "tower.conv", "tower_1.conv"],
        BlockKind::D => &["tower.conv", "tower_1.conv"],
        BlockKind::E { .. } => &["conv", "tower_conv", "tower_1_conv"],
    }
}

impl GemmInception {
    pub fn new(folded: &FoldedWeights) -> Result<Self> {
        let mut convs = HashMap::new();
        for (name, _, _) in LAYERS {
            let f = folded.convs.get(*name).ok_or_else(|| anyhow!("missing folded layer {name}"))?;
            let (stride, pad_h, pad_w) = layer_geometry(name, f.kh, f.kw)?;
            let k = f.kh * f.kw * f.cin;
            // OIHW -> [(ky, kx, ci), co]
            let mut w_kn = vec![0f32; k * f.cout];
            for o in 0..f.cout {
                for ci in 0..f.cin {
                    for ky in 0..f.kh {
                        for kx in 0..f.kw {
                            let src = ((o * f.cin + ci) * f.kh + ky) * f.kw + kx;
                            let row = (ky * f.kw + kx) * f.cin + ci;
                            w_kn[row * f.cout + o] = f.weight[src];
                        }
                    }
                }
            }
            let winograd_u = winograd::layer_eligible(f.kh, f.kw, stride, (pad_h, pad_w), f.cin, f.cout)
                .then(|| winograd::transform_weights(&w_kn, f.kh, f.cin, f.cout));
            let winograd_1d = winograd_1d::eligible_axis(f.kh, f.kw, stride, (pad_h, pad_w), f.cin, f.cout)
                .map(|axis| Winograd1d::new(axis, f.kh.max(f.kw), &w_kn, f.cin, f.cout));
            let layer = GemmConv {
                kh: f.kh,
                kw: f.kw,
                stride,
                pad_h,
                pad_w,
                cin: f.cin,
                cout: f.cout,
                w_kn,
                bias: f.bias.clone(),
                winograd_u,
                winograd_1d,
            };
            convs.insert(*name, layer);
        }
        let mut fused = HashMap::new();
        for (block, kind) in BLOCKS {
            let parts: Vec<&GemmConv> = pointwise_heads(*kind)
                .iter()
                .map(|s| convs.get(format!("{block}.{s}").as_str()).ok_or_else(|| anyhow!("missing {block}.{s}")))
                .collect::<Result<_>>()?;
            fused.insert(*block, GemmConv::concat_pointwise(&parts)?);
        }
        Ok(Self { convs, fused, fc: folded.fc_weight.clone() })
    }

    fn layer(&self, name: &str) -> &GemmConv {
        // Names are built from the static tables the map was filled from.
        &self.convs[name]
    }

    /// New activation holding `layer(x)`.
    fn conv(&self, name: &str, x: View, par: Parallelism) -> Result<Act> {
        let l = self.layer(name);
        let (ho, wo) = l.out_size(x.h, x.w);
        timed_macs(
            || name.to_string(),
            l.macs(x.n, x.h, x.w),
            || {
                let mut y = Act::zeros(x.n, ho, wo, l.cout);
                conv_into(l, x, Dst { data: &mut y.data, stride: l.cout, off: 0 }, par)?;
                Ok(y)
            },
        )
    }

    fn conv_to(&self, name: &str, x: View, out: &mut Act, off: usize, par: Parallelism) -> Result<usize> {
        let l = self.layer(name);
        let stride = out.c;
        timed_macs(|| name.to_string(), l.macs(x.n, x.h, x.w), || conv_into(l, x, Dst { data: &mut out.data, stride, off }, par))?;
        Ok(off + l.cout)
    }

    /// One mixed block. Returns the block output, and for the sFID block its 1x1 branch output.
    fn block(&self, name: &str, kind: BlockKind, x: &Act, par: Parallelism, tap: &mut Option<Vec<f32>>) -> Result<Act> {
        let p = |s: &str| format!("{name}.{s}");
        let heads = &self.fused[name];
        let t = timed_macs(
            || format!("{name}.heads(1x1 fused)"),
            heads.macs(x.n, x.h, x.w),
            || -> Result<Act> {
                let mut t = Act::zeros(x.n, x.h, x.w, heads.cout);
                conv_into(heads, x.all(), Dst { data: &mut t.data, stride: heads.cout, off: 0 }, par)?;
                Ok(t)
            },
        )?;
        let cout_of = |s: &str| self.layer(&p(s)).cout;
        match kind {
            BlockKind::A => {
                let (c1, c5, c3) = (cout_of("conv"), cout_of("tower.conv"), cout_of("tower_1.conv"));
                let total = c1 + cout_of("tower.conv_1") + cout_of("tower_1.conv_2") + cout_of("tower_2.conv");
                let mut out = Act::zeros(x.n, x.h, x.w, total);
                copy_channels(t.view(0, c1), &mut out, 0);
                let mut off = self.conv_to(&p("tower.conv_1"), t.view(c1, c5), &mut out, c1, par)?;
                let u = self.conv(&p("tower_1.conv_1"), t.view(c1 + c5, c3), par)?;
                off = self.conv_to(&p("tower_1.conv_2"), u.all(), &mut out, off, par)?;
                let pooled = timed(|| p("avg_pool"), || avg_pool3_exclude_pad(x.all()));
                self.conv_to(&p("tower_2.conv"), pooled.all(), &mut out, off, par)?;
                Ok(out)
            }
            BlockKind::B => {
                let l = self.layer(&p("conv"));
                let (ho, wo) = l.out_size(x.h, x.w);
                let total = l.cout + cout_of("tower.conv_2") + x.c;
                let mut out = Act::zeros(x.n, ho, wo, total);
                let mut off = self.conv_to(&p("conv"), x.all(), &mut out, 0, par)?;
                let u = self.conv(&p("tower.conv_1"), t.all(), par)?;
                off = self.conv_to(&p("tower.conv_2"), u.all(), &mut out, off, par)?;
                max_pool3(x.all(), 2, 0, Dst { data: &mut out.data, stride: total, off });
                Ok(out)
            }
            BlockKind::C => {
                let (c1, c7) = (cout_of("conv"), cout_of("tower.conv"));
                if name == SPATIAL_TAP_BLOCK {
                    let mut s = Vec::with_capacity(x.n * x.h * x.w * SPATIAL_CHANNELS);
                    for px in t.data.chunks(t.c) {
                        s.extend_from_slice(&px[..SPATIAL_CHANNELS]);
                    }
                    *tap = Some(s);
                }
                let total = c1 + cout_of("tower.conv_2") + cout_of("tower_1.conv_4") + cout_of("tower_2.conv");
                let mut out = Act::zeros(x.n, x.h, x.w, total);
                copy_channels(t.view(0, c1), &mut out, 0);
                let u = self.conv(&p("tower.conv_1"), t.view(c1, c7), par)?;
                let mut off = self.conv_to(&p("tower.conv_2"), u.all(), &mut out, c1, par)?;
                let mut v = self.conv(&p("tower_1.conv_1"), t.view(c1 + c7, cout_of("tower_1.conv")), par)?;
                for s in ["tower_1.conv_2", "tower_1.conv_3"] {
                    v = self.conv(&p(s), v.all(), par)?;
                }
                off = self.conv_to(&p("tower_1.conv_4"), v.all(), &mut out, off, par)?;
                let pooled = timed(|| p("avg_pool"), || avg_pool3_exclude_pad(x.all()));
                self.conv_to(&p("tower_2.conv"), pooled.all(), &mut out, off, par)?;
                Ok(out)
            }
            BlockKind::D => {
                let c3 = cout_of("tower.conv");
                let l = self.layer(&p("tower.conv_1"));
                let (ho, wo) = l.out_size(x.h, x.w);
                let total = l.cout + cout_of("tower_1.conv_3") + x.c;
                let mut out = Act::zeros(x.n, ho, wo, total);
                let mut off = self.conv_to(&p("tower.conv_1"), t.view(0, c3), &mut out, 0, par)?;
                let mut v = self.conv(&p("tower_1.conv_1"), t.view(c3, cout_of("tower_1.conv")), par)?;
                v = self.conv(&p("tower_1.conv_2"), v.all(), par)?;
                off = self.conv_to(&p("tower_1.conv_3"), v.all(), &mut out, off, par)?;
                max_pool3(x.all(), 2, 0, Dst { data: &mut out.data, stride: total, off });
                Ok(out)
            }
            BlockKind::E { max_pool } => {
                let (c1, ca, cb) = (cout_of("conv"), cout_of("tower_conv"), cout_of("tower_1_conv"));
                let total = c1
                    + cout_of("tower_mixed_conv")
                    + cout_of("tower_mixed_conv_1")
                    + cout_of("tower_1_mixed_conv")
                    + cout_of("tower_1_mixed_conv_1")
                    + cout_of("tower_2_conv");
                let mut out = Act::zeros(x.n, x.h, x.w, total);
                copy_channels(t.view(0, c1), &mut out, 0);
                let a = t.view(c1, ca);
                let mut off = self.conv_to(&p("tower_mixed_conv"), a, &mut out, c1, par)?;
                off = self.conv_to(&p("tower_mixed_conv_1"), a, &mut out, off, par)?;
                let b = self.conv(&p("tower_1_conv_1"), t.view(c1 + ca, cb), par)?;
                off = self.conv_to(&p("tower_1_mixed_conv"), b.all(), &mut out, off, par)?;
                off = self.conv_to(&p("tower_1_mixed_conv_1"), b.all(), &mut out, off, par)?;
                let pooled = if max_pool {
                    let mut m = Act::zeros(x.n, x.h, x.w, x.c);
                    let c = m.c;
                    max_pool3(x.all(), 1, 1, Dst { data: &mut m.data, stride: c, off: 0 });
                    m
                } else {
                    avg_pool3_exclude_pad(x.all())
                };
                self.conv_to(&p("tower_2_conv"), pooled.all(), &mut out, off, par)?;
                Ok(out)
            }
        }
    }

    /// Runs `n` images (normalised NHWC 299x299x3) through the network on the calling thread
    /// (plus `par` inside each GEMM), [`IMAGES_PER_PASS`] at a time.
    fn forward_group(&self, x: &[f32], n: usize, par: Parallelism) -> Result<NetOutput> {
        let per_image = INPUT_SIZE * INPUT_SIZE * 3;
        let (mut pool3, mut spatial) = (Vec::with_capacity(n * POOL3_DIM), Vec::with_capacity(n * SPATIAL_DIM));
        for i0 in (0..n).step_by(IMAGES_PER_PASS) {
            let k = IMAGES_PER_PASS.min(n - i0);
            let (p, tap) = self.pool3_at(&x[i0 * per_image..(i0 + k) * per_image], k, INPUT_SIZE, par)?;
            pool3.extend(p);
            spatial.extend(tap.ok_or_else(|| anyhow!("the sFID tap block did not run"))?);
        }
        if spatial.len() != n * SPATIAL_DIM {
            bail!("sFID tap has {} values, expected {}", spatial.len(), n * SPATIAL_DIM);
        }
        let logits = self.fc.as_ref().map(|w| logits(&pool3, n, w));
        Ok(NetOutput { pool3, spatial, logits })
    }

    /// `pool_3` features of `n` square NHWC images of side `size` (>= 75, the smallest input
    /// every layer accepts) on the calling thread, no classifier. FID features are defined at
    /// 299 only; smaller inputs run every layer at a fraction of the cost, for the
    /// instruction-count gate (`bench/icount.sh`).
    pub fn pool3_at_size(&self, x: &[f32], n: usize, size: usize) -> Result<Vec<f32>> {
        if size < 75 {
            bail!("Inception needs inputs of at least 75x75, got {size}x{size}");
        }
        if x.len() != n * size * size * 3 {
            bail!("expected {n} images of {size}x{size}x3 ({} floats), got {}", n * size * size * 3, x.len());
        }
        Ok(self.pool3_at(x, n, size, Parallelism::None)?.0)
    }

    /// Every layer over `n` NHWC images of side `size`: `pool_3` and the sFID tap (as the tap
    /// block left it).
    fn pool3_at(&self, x: &[f32], n: usize, size: usize, par: Parallelism) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let input = View { data: x, stride: 3, off: 0, c: 3, n, h: size, w: size };
        let mut y = self.conv("conv", input, par)?;
        y = self.conv("conv_1", y.all(), par)?;
        y = self.conv("conv_2", y.all(), par)?;
        y = timed(|| "pool0".into(), || pool_s2(&y));
        y = self.conv("conv_3", y.all(), par)?;
        y = self.conv("conv_4", y.all(), par)?;
        y = timed(|| "pool1".into(), || pool_s2(&y));
        let mut tap = None;
        for (name, kind) in BLOCKS {
            y = timed(|| format!("[block {name}]"), || self.block(name, *kind, &y, par, &mut tap))?;
        }
        if y.c != POOL3_DIM {
            bail!("the last block produced {} channels, expected {POOL3_DIM}", y.c);
        }
        // pool_3: mean over the 8x8 positions, accumulated in f64 so the order of the sum does not
        // matter at the 1e-7 level.
        let hw = y.h * y.w;
        let mut pool3 = vec![0f32; n * POOL3_DIM];
        for img in 0..n {
            let mut acc = vec![0f64; POOL3_DIM];
            for px in y.data[img * hw * POOL3_DIM..(img + 1) * hw * POOL3_DIM].chunks(POOL3_DIM) {
                for (a, v) in acc.iter_mut().zip(px) {
                    *a += *v as f64;
                }
            }
            for (o, a) in pool3[img * POOL3_DIM..].iter_mut().zip(&acc) {
                *o = (*a / hw as f64) as f32;
            }
        }
        Ok((pool3, tap))
    }

    /// Forward pass on normalised NHWC input [n, 299, 299, 3].
    pub fn forward(&self, x: &[f32], n: usize) -> Result<NetOutput> {
        genbench_runtime::kernels::record_fast("inception-nhwc-gemm");
        let threads = rayon::current_num_threads().max(1);
        let per_image = INPUT_SIZE * INPUT_SIZE * 3;
        if n == 0 {
            return Ok(NetOutput { pool3: vec![], spatial: vec![], logits: self.fc.as_ref().map(|_| vec![]) });
        }
        if n < threads || threads == 1 {
            let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
            return self.forward_group(x, n, par);
        }
        // Image-parallel: split into `threads` contiguous groups of near-equal size.
        let groups: Vec<(usize, usize)> = (0..threads).map(|g| (g * n / threads, (g + 1) * n / threads)).filter(|(a, b)| b > a).collect();
        let parts: Vec<NetOutput> = groups
            .par_iter()
            .map(|&(a, b)| self.forward_group(&x[a * per_image..b * per_image], b - a, Parallelism::None))
            .collect::<Result<_>>()?;
        let mut out = NetOutput { pool3: vec![], spatial: vec![], logits: self.fc.as_ref().map(|_| vec![]) };
        for p in parts {
            out.pool3.extend(p.pool3);
            out.spatial.extend(p.spatial);
            if let (Some(all), Some(l)) = (out.logits.as_mut(), p.logits) {
                all.extend(l);
            }
        }
        Ok(out)
    }
}

fn copy_channels(src: View, dst: &mut Act, off: usize) {
    let c = src.c;
    let stride = dst.c;
    for (i, px) in dst.data.chunks_mut(stride).enumerate() {
        let s = i * src.stride + src.off;
        px[off..off + c].copy_from_slice(&src.data[s..s + c]);
    }
}

fn pool_s2(x: &Act) -> Act {
    let ho = (x.h - 3) / 2 + 1;
    let wo = (x.w - 3) / 2 + 1;
    let mut y = Act::zeros(x.n, ho, wo, x.c);
    let c = x.c;
    max_pool3(x.all(), 2, 0, Dst { data: &mut y.data, stride: c, off: 0 });
    y
}

/// `pool3 · Wᵀ` (no bias) with W [1008, 2048] row-major.
fn logits(pool3: &[f32], n: usize, w: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; n * LOGITS_DIM];
    // SAFETY: pool3 is n x 2048 row-major, w is 1008 x 2048 (read as its transpose through the
    // strides), out is n x 1008 row-major.
    unsafe {
        gemm::gemm(
            n,
            LOGITS_DIM,
            POOL3_DIM,
            out.as_mut_ptr(),
            1,
            LOGITS_DIM as isize,
            false,
            pool3.as_ptr(),
            1,
            POOL3_DIM as isize,
            w.as_ptr(),
            POOL3_DIM as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(a: &Act) -> View<'_> {
        a.all()
    }

    #[test]
    fn average_pool_excludes_padding_at_corners_and_edges() {
        // 1 image, 3x3, 1 channel, values 1..9.
        let a = Act { n: 1, h: 3, w: 3, c: 1, data: (1..=9).map(|v| v as f32).collect() };
        let p = avg_pool3_exclude_pad(view(&a));
        // Corner (0,0): mean of 1,2,4,5 = 3 (count 4, not 9).
        assert_eq!(p.data[0], 3.0);
        // Edge (0,1): mean of 1,2,3,4,5,6 = 3.5 (count 6).
        assert_eq!(p.data[1], 3.5);
        // Centre: mean of all = 5.
        assert_eq!(p.data[4], 5.0);
        // Corner (2,2): mean of 5,6,8,9 = 7.
        assert_eq!(p.data[8], 7.0);
    }

    #[test]
    fn max_pool_same_keeps_size_and_takes_window_max() {
        // Negative values: zero padding would wrongly win; padding must be ignored.
        let a = Act { n: 1, h: 3, w: 3, c: 1, data: (1..=9).map(|v| -(v as f32)).collect() };
        let mut out = vec![0f32; 9];
        max_pool3(view(&a), 1, 1, Dst { data: &mut out, stride: 1, off: 0 });
        assert_eq!(out, vec![-1.0, -1.0, -2.0, -1.0, -1.0, -2.0, -4.0, -4.0, -5.0]);
        let mut out = vec![0f32; 1];
        max_pool3(view(&a), 2, 0, Dst { data: &mut out, stride: 1, off: 0 });
        assert_eq!(out, vec![-1.0]);
    }

    fn conv_ref(l: &GemmConv, x: &Act) -> Act {
        // Direct definition in NHWC for checking the im2col path.
        let (ho, wo) = l.out_size(x.h, x.w);
        let mut y = Act::zeros(x.n, ho, wo, l.cout);
        for img in 0..x.n {
            for oy in 0..ho {
                for ox in 0..wo {
                    for o in 0..l.cout {
                        let mut s = l.bias[o] as f64;
                        for ky in 0..l.kh {
                            for kx in 0..l.kw {
                                let iy = (oy * l.stride + ky) as isize - l.pad_h as isize;
                                let ix = (ox * l.stride + kx) as isize - l.pad_w as isize;
                                if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize {
                                    continue;
                                }
                                for c in 0..l.cin {
                                    let xv = x.data[((img * x.h + iy as usize) * x.w + ix as usize) * x.c + c];
                                    s += xv as f64 * l.w_kn[((ky * l.kw + kx) * l.cin + c) * l.cout + o] as f64;
                                }
                            }
                        }
                        y.data[((img * ho + oy) * wo + ox) * l.cout + o] = s.max(0.0) as f32;
                    }
                }
            }
        }
        y
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn asymmetric_and_strided_convolutions_match_the_definition() {
        let x = Act { n: 2, h: 9, w: 7, c: 5, data: pseudo_random(2 * 9 * 7 * 5, 1) };
        for (kh, kw, stride, ph, pw, expect) in [
            (1, 7, 1, 0, 3, (9, 7)),
            (7, 1, 1, 3, 0, (9, 7)),
            (1, 3, 1, 0, 1, (9, 7)),
            (3, 1, 1, 1, 0, (9, 7)),
            (3, 3, 2, 0, 0, (4, 3)),
            (5, 5, 1, 2, 2, (9, 7)),
        ] {
            let cout = 6;
            let l = GemmConv {
                kh,
                kw,
                stride,
                pad_h: ph,
                pad_w: pw,
                cin: 5,
                cout,
                w_kn: pseudo_random(kh * kw * 5 * cout, 7),
                bias: pseudo_random(cout, 3),
                winograd_u: None,
                winograd_1d: None,
            };
            assert_eq!(l.out_size(x.h, x.w), expect, "{kh}x{kw}");
            let want = conv_ref(&l, &x);
            for par in [Parallelism::None, Parallelism::Rayon(2)] {
                let mut got = Act::zeros(x.n, expect.0, expect.1, cout);
                conv_into(&l, view(&x), Dst { data: &mut got.data, stride: cout, off: 0 }, par).unwrap();
                let err = want.data.iter().zip(&got.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 1e-5, "{kh}x{kw} s{stride}: max err {err}");
            }
        }
    }

    #[test]
    fn fused_pointwise_equals_separate_convs_and_writes_into_channel_slices() {
        let x = Act { n: 1, h: 4, w: 4, c: 6, data: pseudo_random(96, 11) };
        let mk = |cout, seed| GemmConv {
            kh: 1,
            kw: 1,
            stride: 1,
            pad_h: 0,
            pad_w: 0,
            cin: 6,
            cout,
            w_kn: pseudo_random(6 * cout, seed),
            bias: pseudo_random(cout, seed + 1),
            winograd_u: None,
            winograd_1d: None,
        };
        let (a, b) = (mk(3, 20), mk(2, 30));
        let fused = GemmConv::concat_pointwise(&[&a, &b]).unwrap();
        let mut f = Act::zeros(1, 4, 4, 5);
        conv_into(&fused, view(&x), Dst { data: &mut f.data, stride: 5, off: 0 }, Parallelism::None).unwrap();
        // Write b alone into channels 1..3 of a wider buffer, leaving the others untouched.
        let mut wide = Act { n: 1, h: 4, w: 4, c: 4, data: vec![9.0; 64] };
        conv_into(&b, view(&x), Dst { data: &mut wide.data, stride: 4, off: 1 }, Parallelism::None).unwrap();
        let (ra, rb) = (conv_ref(&a, &x), conv_ref(&b, &x));
        for px in 0..16 {
            for c in 0..3 {
                assert!((f.data[px * 5 + c] - ra.data[px * 3 + c]).abs() < 1e-6);
            }
            for c in 0..2 {
                assert!((f.data[px * 5 + 3 + c] - rb.data[px * 2 + c]).abs() < 1e-6);
                assert!((wide.data[px * 4 + 1 + c] - rb.data[px * 2 + c]).abs() < 1e-6);
            }
            assert_eq!(wide.data[px * 4], 9.0);
            assert_eq!(wide.data[px * 4 + 3], 9.0);
        }
    }

    /// Runs `l` on `x` into channels 2.. of a buffer 3 channels wider than the output and returns
    /// the largest difference from `want`; the channels outside the slice must be left as they
    /// were.
    fn max_error_in_channel_slice(l: &GemmConv, x: &Act, want: &Act, par: Parallelism) -> f32 {
        let (ho, wo) = l.out_size(x.h, x.w);
        let (cout, stride) = (l.cout, l.cout + 3);
        let mut got = Act { n: x.n, h: ho, w: wo, c: stride, data: vec![7.0; x.n * ho * wo * stride] };
        conv_into(l, view(x), Dst { data: &mut got.data, stride, off: 2 }, par).unwrap();
        let mut err = 0f32;
        for px in 0..x.n * ho * wo {
            for c in 0..cout {
                err = err.max((got.data[px * stride + 2 + c] - want.data[px * cout + c]).abs());
            }
            assert_eq!((got.data[px * stride], got.data[px * stride + 1], got.data[px * stride + 2 + cout]), (7.0, 7.0, 7.0));
        }
        err
    }

    #[test]
    fn one_dimensional_winograd_route_matches_the_definition() {
        // 1x7 / 7x1 (Mixed_6*) and 1x3 / 3x1 (Mixed_7*): odd and even line lengths (a last
        // tile with one output), tiles crossing band and image boundaries, written into a channel
        // slice of a wider buffer, on one thread and with the parallel stages.
        for (kh, kw, h, w, cin, cout) in
            [(1, 7, 17, 17, 16, 24), (7, 1, 17, 16, 20, 16), (1, 3, 8, 9, 32, 17), (3, 1, 9, 8, 16, 32), (7, 1, 40, 33, 16, 16)]
        {
            let (pad_h, pad_w) = ((kh - 1) / 2, (kw - 1) / 2);
            let x = Act { n: 2, h, w, c: cin, data: pseudo_random(2 * h * w * cin, 5) };
            let w_kn = pseudo_random(kh * kw * cin * cout, 9);
            let axis = winograd_1d::eligible_axis(kh, kw, 1, (pad_h, pad_w), cin, cout).expect("eligible");
            let winograd_1d = Some(Winograd1d::new(axis, kh.max(kw), &w_kn, cin, cout));
            let l =
                GemmConv { kh, kw, stride: 1, pad_h, pad_w, cin, cout, w_kn, bias: pseudo_random(cout, 4), winograd_u: None, winograd_1d };
            let (ho, wo) = l.out_size(h, w);
            assert_eq!((ho, wo), (h, w));
            let want = conv_ref(&l, &x);
            let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            for par in [Parallelism::None, Parallelism::Rayon(2)] {
                let err = max_error_in_channel_slice(&l, &x, &want, par);
                // f32 transforms with entries up to a few units at r = 7: a few ulps of the
                // output scale more than the direct sum.
                assert!(err < 1e-5 * scale.max(1.0), "{kh}x{kw} {h}x{w} {cin}->{cout} {par:?}: max err {err} (scale {scale})");
            }
        }
    }

    #[test]
    fn winograd_route_matches_the_definition() {
        // 3x3 (F(4x4)) and 5x5 (F(2x2)) stride-1 layers with >= 16 channels and >= 8x8
        // outputs: every padding up to (r - 1) / 2, sizes that leave partial edge tiles of every
        // width, channel counts that are not multiples of the 8-lane step, two images (bands of
        // tiles that span both), written into a channel slice of a wider buffer, on one thread
        // and with the parallel stages.
        let cases = [
            (3, 1, 35, 35, 16, 24),
            (3, 0, 36, 41, 20, 16),
            (3, 1, 32, 34, 32, 17),
            (3, 0, 73, 40, 16, 32),
            (3, 1, 33, 38, 19, 21),
            (5, 2, 35, 35, 24, 16),
            (5, 0, 37, 38, 16, 19),
            (5, 1, 33, 36, 17, 24),
            (3, 1, 8, 8, 24, 16),
            (3, 1, 9, 11, 16, 16),
            (5, 2, 8, 10, 16, 20),
        ];
        for (r, pad, h, w, cin, cout) in cases {
            let x = Act { n: 2, h, w, c: cin, data: pseudo_random(2 * h * w * cin, 5) };
            let w_kn = pseudo_random(r * r * cin * cout, 9);
            let winograd_u = Some(winograd::transform_weights(&w_kn, r, cin, cout));
            let l = GemmConv {
                kh: r,
                kw: r,
                stride: 1,
                pad_h: pad,
                pad_w: pad,
                cin,
                cout,
                w_kn,
                bias: pseudo_random(cout, 4),
                winograd_u,
                winograd_1d: None,
            };
            let (ho, wo) = l.out_size(h, w);
            assert!(winograd::layer_eligible(r, r, 1, (pad, pad), cin, cout) && winograd::map_large_enough(ho, wo));
            let want = conv_ref(&l, &x);
            let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            for par in [Parallelism::None, Parallelism::Rayon(2)] {
                let err = max_error_in_channel_slice(&l, &x, &want, par);
                // Transform entries up to 5 (B^T) and 8 (A^T): a few ulps of the output scale
                // more than the direct sum, as the one-dimensional F(3, 7) costs.
                assert!(err < 1e-5 * scale.max(1.0), "{r}x{r} pad {pad} {h}x{w} {cin}->{cout} {par:?}: max err {err} (scale {scale})");
            }
        }
    }
}
