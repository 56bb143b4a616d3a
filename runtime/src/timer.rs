//! Wall-clock timing that is honest on asynchronous devices: the device is synchronised before
//! the clock starts and before it stops, so a CUDA kernel launch is not mistaken for its run.

use candle_core::Device;
use std::time::{Duration, Instant};

pub struct Stopwatch<'a> {
    device: &'a Device,
    start: Instant,
}

impl<'a> Stopwatch<'a> {
    pub fn start(device: &'a Device) -> candle_core::Result<Self> {
        device.synchronize()?;
        Ok(Self { device, start: Instant::now() })
    }
    /// Time since `start`, after waiting for all queued device work.
    pub fn elapsed(&self) -> candle_core::Result<Duration> {
        self.device.synchronize()?;
        Ok(self.start.elapsed())
    }
}

/// Runs `f` and returns its value with the synchronised wall time.
pub fn timed<T>(
    device: &Device,
    f: impl FnOnce() -> candle_core::Result<T>,
) -> candle_core::Result<(T, Duration)> {
    let sw = Stopwatch::start(device)?;
    let out = f()?;
    Ok((out, sw.elapsed()?))
}

/// Median of a set of durations (the statistic we quote: these machines are noisy).
pub fn median(mut xs: Vec<Duration>) -> Option<Duration> {
    if xs.is_empty() {
        return None;
    }
    xs.sort();
    let n = xs.len();
    Some(if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2 })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn median_of_durations() {
        let ms = |x| Duration::from_millis(x);
        assert_eq!(median(vec![ms(3), ms(1), ms(2)]), Some(ms(2)));
        assert_eq!(median(vec![ms(4), ms(1), ms(2), ms(3)]), Some(Duration::from_micros(2500)));
        assert_eq!(median(vec![]), None);
    }
    #[test]
    fn timed_measures_work() {
        let (v, d) = timed(&Device::Cpu, || {
            std::thread::sleep(Duration::from_millis(5));
            Ok(7)
        })
        .unwrap();
        assert_eq!(v, 7);
        assert!(d >= Duration::from_millis(5));
    }
}
