//! Timing that is honest on asynchronous devices. On the CPU: wall time. On a CUDA device: CUDA
//! events recorded on candle's stream at start and stop, so a kernel launch is not mistaken for
//! its run, without a device-wide synchronisation inside a step loop (only the stop event is
//! waited for, as `torch.cuda.Event.elapsed_time` does).

use candle_core::Device;
use std::time::{Duration, Instant};

pub struct Stopwatch<'a> {
    device: &'a Device,
    start: Instant,
    events: Option<crate::cuda::EventTimer>,
}

impl<'a> Stopwatch<'a> {
    pub fn start(device: &'a Device) -> candle_core::Result<Self> {
        let events = crate::cuda::EventTimer::start(device)?;
        if events.is_none() {
            // Other asynchronous devices (Metal): drain queued work so it is not counted.
            device.synchronize()?;
        }
        Ok(Self { device, start: Instant::now(), events })
    }
    /// Time since `start` of the work queued in between (CUDA: event time on the stream).
    pub fn elapsed(&self) -> candle_core::Result<Duration> {
        match &self.events {
            Some(ev) => ev.elapsed(),
            None => {
                self.device.synchronize()?;
                Ok(self.start.elapsed())
            }
        }
    }
}

/// Runs `f` and returns its value with the synchronised wall time.
pub fn timed<T>(device: &Device, f: impl FnOnce() -> candle_core::Result<T>) -> candle_core::Result<(T, Duration)> {
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
