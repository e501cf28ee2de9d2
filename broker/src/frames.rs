//! Reading Kafka's size-prefixed frames off a socket in as few receives as
//! the peer's sending allows.
//!
//! Reading a frame as its 4-byte size and then its body costs two receives
//! per request, and on these machines each receive is a trip through the
//! ring and often a wake-up of its own. A producer pipelines its requests,
//! so the next request's size is usually in the socket by the time a body
//! is read: [`FrameReader`] asks for a little more than the body, keeps
//! what comes along of the next frame, and so reads a pipelined stream of
//! large frames in one receive each. Small frames (a fetch, a heartbeat)
//! are received into the reader's own buffer, several at a time when they
//! come together, and copied out of it.
//!
//! Memory: the reader's buffer is [`CARRY`] bytes, held for as long as the
//! connection; a large frame's buffer has room for [`PEEK`] bytes more than
//! the frame. Bytes read ahead of a frame's size being checked are at most
//! [`CARRY`].

use std::io;

use compio::buf::{IntoInner, IoBuf};
use compio::io::AsyncRead;

/// The reader's own buffer: small frames are received into it whole.
pub const CARRY: usize = 4096;

/// How far past its end a large frame's receive reads into the next one.
pub const PEEK: usize = 512;

/// Frames off one socket, in order. Call [`FrameReader::next_size`], then
/// [`FrameReader::body`] with that size; the reader may already hold bytes
/// of the frames after it.
#[derive(Debug)]
pub struct FrameReader {
    /// Received bytes not yet returned: `buf[start..]`. Its capacity is
    /// [`CARRY`].
    buf: Vec<u8>,
    start: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::with_bytes(Vec::new())
    }
}

impl FrameReader {
    /// A reader whose stream begins with `held` (bytes another reader of
    /// the same socket received and did not use; at most [`CARRY`]).
    pub fn with_bytes(held: Vec<u8>) -> Self {
        let mut buf = Vec::with_capacity(CARRY.max(held.len()));
        buf.extend_from_slice(&held);
        FrameReader { buf, start: 0 }
    }

    /// The bytes received and not yet returned, for a reader that takes the
    /// socket over ([`FrameReader::with_bytes`]).
    pub fn into_held(self) -> Vec<u8> {
        self.buf[self.start..].to_vec()
    }

    fn held(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Moves the unreturned bytes to the front of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Receives into the buffer's free space; at least one byte, or
    /// `UnexpectedEof` at the end of the stream.
    async fn fill<S: AsyncRead>(&mut self, stream: &mut S) -> io::Result<()> {
        if self.buf.len() == self.buf.capacity() {
            self.compact();
        }
        let free = self.buf.len();
        let compio::BufResult(result, slice) = stream
            .read(std::mem::take(&mut self.buf).slice(free..))
            .await;
        self.buf = slice.into_inner();
        match result? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(()),
        }
    }

    /// The next frame's size as sent (not yet checked: it may be negative
    /// or huge). `UnexpectedEof` if the stream ends first.
    pub async fn next_size<S: AsyncRead>(&mut self, stream: &mut S) -> io::Result<i32> {
        while self.held() < 4 {
            self.fill(stream).await?;
        }
        let at = self.start;
        Ok(i32::from_be_bytes([
            self.buf[at],
            self.buf[at + 1],
            self.buf[at + 2],
            self.buf[at + 3],
        ]))
    }

    /// The body, `len` bytes, of the frame whose size
    /// [`FrameReader::next_size`] returned.
    pub async fn body<S: AsyncRead>(&mut self, stream: &mut S, len: usize) -> io::Result<Vec<u8>> {
        debug_assert!(self.held() >= 4, "body() before next_size()");
        self.start += 4;
        if len + 4 <= CARRY {
            // Small: received into the buffer, then copied out.
            if self.start + len > self.buf.capacity() {
                self.compact();
            }
            while self.held() < len {
                self.fill(stream).await?;
            }
            let body = self.buf[self.start..self.start + len].to_vec();
            self.start += len;
            if self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
            return Ok(body);
        }
        // Large: received into a buffer of its own, whose spare room takes
        // the start of the next frame when it is already there.
        let mut body = Vec::with_capacity(len + PEEK);
        body.extend_from_slice(&self.buf[self.start..]);
        self.buf.clear();
        self.start = 0;
        while body.len() < len {
            let have = body.len();
            let compio::BufResult(result, slice) = stream.read(body.slice(have..)).await;
            body = slice.into_inner();
            if result? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        self.buf.extend_from_slice(&body[len..]);
        body.truncate(len);
        Ok(body)
    }
}

/// Reads one whole frame, size included, from a peer that sends nothing
/// after it until asked again (a response to the one request in flight).
/// Receives into a buffer of `expect` bytes (at least [`CARRY`]), grown
/// once the size is known if the frame is larger, so that a frame no
/// larger than expected takes one receive. A size outside `0..=max`, or
/// bytes past the frame, are errors.
pub async fn read_whole<S: AsyncRead>(
    stream: &mut S,
    expect: usize,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(expect.max(CARRY));
    let mut size = None;
    loop {
        let have = buf.len();
        let compio::BufResult(result, slice) = stream.read(buf.slice(have..)).await;
        buf = slice.into_inner();
        if result? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if size.is_none() && buf.len() >= 4 {
            let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= max)
                .ok_or_else(|| io::Error::other(format!("a frame of {len} bytes (most {max})")))?;
            buf.reserve_exact((len + 4).saturating_sub(buf.len()));
            size = Some(len + 4);
        }
        match size {
            Some(whole) if buf.len() > whole => {
                return Err(io::Error::other("bytes after the frame, none asked for"));
            }
            Some(whole) if buf.len() == whole => return Ok(buf),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that hands out its bytes in the pieces given, one piece
    /// (or as much of it as fits) per receive, counting the receives.
    struct Pieces {
        pieces: std::collections::VecDeque<Vec<u8>>,
        receives: usize,
    }

    impl Pieces {
        fn new(pieces: Vec<Vec<u8>>) -> Self {
            Pieces {
                pieces: pieces.into(),
                receives: 0,
            }
        }
    }

    impl AsyncRead for Pieces {
        async fn read<B: compio::buf::IoBufMut>(
            &mut self,
            mut buf: B,
        ) -> compio::BufResult<usize, B> {
            self.receives += 1;
            let Some(mut piece) = self.pieces.pop_front() else {
                return compio::BufResult(Ok(0), buf);
            };
            let room = buf.buf_capacity() - buf.buf_len();
            if piece.len() > room {
                self.pieces.push_front(piece.split_off(room));
            }
            let n = piece.len();
            buf.extend_from_slice(&piece).expect("room was checked");
            compio::BufResult(Ok(n), buf)
        }
    }

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut f = (len as i32).to_be_bytes().to_vec();
        f.extend(std::iter::repeat_n(fill, len));
        f
    }

    async fn read_all(reader: &mut FrameReader, stream: &mut Pieces) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            match reader.next_size(stream).await {
                Ok(len) => out.push(reader.body(stream, len as usize).await.unwrap()),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        compio::runtime::Runtime::new().unwrap().block_on(f)
    }

    #[test]
    fn a_pipelined_stream_of_large_frames_takes_one_receive_each() {
        // Everything already sent: each large body's receive also brings
        // the next frame's size.
        let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(65_536, i)).collect();
        let mut stream = Pieces::new(vec![frames.concat()]);
        let mut reader = FrameReader::default();
        let got = run(read_all(&mut reader, &mut stream));
        assert_eq!(got.len(), 5);
        for (i, body) in got.iter().enumerate() {
            assert_eq!(body, &frames[i][4..]);
        }
        // The first size comes in a receive of its own; then one receive
        // per frame, and one that finds the end of the stream.
        assert_eq!(stream.receives, 7);
    }

    #[test]
    fn small_frames_that_arrive_together_take_one_receive() {
        let frames: Vec<Vec<u8>> = (0..8).map(|i| frame(100 + i, i as u8)).collect();
        let mut stream = Pieces::new(vec![frames.concat()]);
        let mut reader = FrameReader::default();
        let got = run(read_all(&mut reader, &mut stream));
        let want: Vec<Vec<u8>> = frames.iter().map(|f| f[4..].to_vec()).collect();
        assert_eq!(got, want);
        assert_eq!(stream.receives, 2);
    }

    #[test]
    fn frames_cut_anywhere_come_out_whole() {
        // Sizes around both thresholds, cut into pieces of every length
        // from 1 byte up: the frames come out the same.
        let sizes = [
            0,
            1,
            3,
            CARRY - 5,
            CARRY - 4,
            CARRY - 3,
            CARRY,
            9_000,
            70_000,
        ];
        let frames: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| frame(n, i as u8 + 1))
            .collect();
        let all = frames.concat();
        let want: Vec<Vec<u8>> = frames.iter().map(|f| f[4..].to_vec()).collect();
        for cut in [
            1,
            2,
            3,
            4,
            5,
            7,
            511,
            512,
            513,
            4095,
            4096,
            65_536,
            all.len(),
        ] {
            let mut stream = Pieces::new(all.chunks(cut).map(<[u8]>::to_vec).collect());
            let mut reader = FrameReader::default();
            let got = run(read_all(&mut reader, &mut stream));
            assert_eq!(got, want, "pieces of {cut} bytes");
        }
    }

    #[test]
    fn held_bytes_move_to_a_new_reader() {
        let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(20_000, i)).collect();
        let mut stream = Pieces::new(vec![frames.concat()]);
        let mut first = FrameReader::default();
        let got = run(async {
            let len = first.next_size(&mut stream).await.unwrap();
            first.body(&mut stream, len as usize).await.unwrap()
        });
        assert_eq!(got, frames[0][4..]);
        // The first reader took some of the second frame with it.
        let held = first.into_held();
        assert!(!held.is_empty() && held.len() <= PEEK);
        let mut second = FrameReader::with_bytes(held);
        let rest = run(read_all(&mut second, &mut stream));
        assert_eq!(rest, vec![frames[1][4..].to_vec(), frames[2][4..].to_vec()]);
    }

    #[test]
    fn a_whole_frame_no_larger_than_expected_takes_one_receive() {
        let one = frame(50_000, 3);
        let mut stream = Pieces::new(vec![one.clone()]);
        let got = run(read_whole(&mut stream, 60_000, 1 << 20)).unwrap();
        assert_eq!((got, stream.receives), (one, 1));
    }

    #[test]
    fn a_whole_frame_larger_than_expected_comes_out_whole() {
        let one = frame(200_000, 4);
        for cut in [1, 3, 4, 5, 4096, 100_000, one.len()] {
            let mut stream = Pieces::new(one.chunks(cut).map(<[u8]>::to_vec).collect());
            let got = run(read_whole(&mut stream, 10, 1 << 20)).unwrap();
            assert_eq!(got, one, "pieces of {cut} bytes");
        }
    }

    #[test]
    fn a_whole_frame_refuses_a_bad_size_and_bytes_after_it() {
        let mut stream = Pieces::new(vec![frame(2_000, 1)]);
        assert!(run(read_whole(&mut stream, 0, 1_000)).is_err());
        let mut stream = Pieces::new(vec![(-5i32).to_be_bytes().to_vec()]);
        assert!(run(read_whole(&mut stream, 0, 1_000)).is_err());
        let mut stream = Pieces::new(vec![[frame(100, 1), frame(100, 2)].concat()]);
        assert!(run(read_whole(&mut stream, 0, 1_000)).is_err());
        let mut stream = Pieces::new(vec![frame(100, 1)[..50].to_vec()]);
        let err = run(read_whole(&mut stream, 0, 1_000)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_stream_that_ends_inside_a_frame_is_an_unexpected_end() {
        let mut cut = frame(10_000, 7);
        cut.truncate(5_000);
        let mut stream = Pieces::new(vec![cut]);
        let mut reader = FrameReader::default();
        let err = run(async {
            let len = reader.next_size(&mut stream).await.unwrap();
            reader.body(&mut stream, len as usize).await.unwrap_err()
        });
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
