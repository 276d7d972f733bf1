using System.Buffers;
using System.Runtime.InteropServices;
using System.Threading.Channels;
using Google.Protobuf;
using Microsoft.Win32.SafeHandles;
using Rbs.V1;

namespace Rbs.Agent.Execution;

/// <summary>
/// A frame on its way to the response stream. <see cref="Written"/> must be called once the write has completed (or
/// the frame was dropped): a pipe's frame wraps one of its pump's segments, which is reused only after that.
/// </summary>
internal readonly record struct OutgoingFrame(ServerFrame Frame, OutputPump? Owner = null)
{
    public void Written() => Owner?.SegmentWritten();
}

/// <summary>
/// Copies one of the tool's outputs (a pipe, or the master of its pseudo-terminal) into the command's bounded frame
/// channel, byte for byte. When the channel is full the pump stops reading, the pipe or terminal buffer fills and the
/// tool blocks in write(): a slow client slows the tool down instead of growing the agent's memory.
/// </summary>
/// <remarks>
/// A pipe is read on a thread of its own, non-blocking, into one of <see cref="SegmentCount"/> segments of
/// <see cref="SegmentSize"/> bytes. Reading goes on into the same segment while the pipe has data, so while the
/// response stream is busy writing the previous frame, what the tool writes meanwhile coalesces into one frame instead
/// of one frame (and one HTTP/2 flush) per write() of the tool. A segment is sent as soon as the pipe is empty, so
/// output is never held back waiting for more. The frame wraps the segment without a copy; the segment is refilled
/// only after the response stream has written it (<see cref="OutgoingFrame.Written"/>). Memory per pipe is thus
/// bounded by <see cref="SegmentCount"/> × <see cref="SegmentSize"/>, plus the kernel's pipe buffer.
/// </remarks>
internal sealed class OutputPump : IDisposable
{
    /// <summary>64 KiB: the read size on a terminal (a terminal's buffer holds less).</summary>
    public const int ChunkSize = 64 * 1024;

    /// <summary>The largest frame read from a pipe: 256 KiB, what accumulates while the previous frame is written.</summary>
    public const int SegmentSize = 256 * 1024;

    /// <summary>Two segments per pipe: one being filled while the other is being written.</summary>
    public const int SegmentCount = 2;

    /// <summary>
    /// How long a frame read from a pipe stays open for more output while the previous frame is still being written
    /// (it could not go out sooner anyway): 2 ms, far below what a person notices.
    /// </summary>
    private const int CoalesceWaitMilliseconds = 2;

    /// <summary>How often a read waiting on a quiet pipe checks for <see cref="AbortRead"/>.</summary>
    private const int PollIntervalMilliseconds = 250;

    /// <summary>Small enough for many idle commands, large enough that a read thread is never short of stack.</summary>
    private const int ReadThreadStackSize = 256 * 1024;

    private readonly SafePipeHandle? _pipe;
    private readonly Pseudoterminal? _terminal;
    private readonly bool _isStdout;
    private readonly ChannelWriter<OutgoingFrame> _frames;
    private readonly CancellationToken _delivery;
    private readonly CancellationTokenSource _abortRead = new();
    private readonly byte[]?[] _segments = new byte[SegmentCount][];
    private readonly SemaphoreSlim _freeSegments = new(SegmentCount, SegmentCount);
    private int _nextSegment;
    private int _finished;
    private long _readStartedTimestamp;
    private bool _discard;

    /// <summary>Pumps a pipe (the read end; the pump makes it non-blocking).</summary>
    public OutputPump(SafePipeHandle pipe, bool isStdout, ChannelWriter<OutgoingFrame> frames, CancellationToken delivery)
        : this(pipe, null, isStdout, frames, delivery)
    {
    }

    /// <summary>Pumps a pseudo-terminal's output; it is sent as the stream it stands for (stderr, which is always on it).</summary>
    public OutputPump(Pseudoterminal terminal, ChannelWriter<OutgoingFrame> frames, CancellationToken delivery)
        : this(null, terminal, isStdout: false, frames, delivery)
    {
    }

    private OutputPump(SafePipeHandle? pipe, Pseudoterminal? terminal, bool isStdout, ChannelWriter<OutgoingFrame> frames, CancellationToken delivery)
    {
        _pipe = pipe;
        _terminal = terminal;
        _isStdout = isStdout;
        _frames = frames;
        _delivery = delivery;
        _discard = delivery.IsCancellationRequested;
    }

    public long Bytes { get; private set; }

    /// <summary>True for the stdout pipe; false for stderr and the terminal (whose frames are stderr).</summary>
    public bool IsStdout => _isStdout;

    /// <summary>True when reading stopped because <see cref="AbortRead"/> was called, not at EOF.</summary>
    public bool Aborted { get; private set; }

    /// <summary>When the pending wait for output started (TimeProvider timestamp), or 0 when not waiting for output.</summary>
    public long ReadStartedTimestamp => Interlocked.Read(ref _readStartedTimestamp);

    /// <summary>Runs to EOF (or <see cref="AbortRead"/>) on a thread of its own: terminal reads block, pipe reads wait in poll.</summary>
    public Task RunAsync(TimeProvider time)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(
            () =>
            {
                try
                {
                    if (_terminal is null)
                    {
                        PumpPipe(time);
                    }
                    else
                    {
                        PumpTerminal(time);
                    }

                    done.SetResult();
                }
                catch (Exception ex)
                {
                    done.SetException(ex);
                }
                finally
                {
                    Volatile.Write(ref _finished, 1);
                }
            },
            ReadThreadStackSize)
        {
            IsBackground = true,
            Name = _terminal is null ? (_isStdout ? "rbs-agent stdout" : "rbs-agent stderr") : "rbs-agent terminal output",
        };
        thread.Start();
        return done.Task;
    }

    /// <summary>Gives up on output that some escaped descendant keeps open after the tool's group is gone.</summary>
    public void AbortRead() => _abortRead.Cancel();

    public void Dispose()
    {
        // The segments go back to the pool only when no frame can still refer to them: the read thread is done and
        // every frame that wrapped one was written (otherwise the GC takes them).
        if (Volatile.Read(ref _finished) == 1 && _freeSegments.CurrentCount == SegmentCount)
        {
            for (var i = 0; i < _segments.Length; i++)
            {
                if (_segments[i] is { } segment)
                {
                    ArrayPool<byte>.Shared.Return(segment);
                    _segments[i] = null;
                }
            }
        }

        _abortRead.Dispose();
    }

    /// <summary>The response stream has written (or dropped) a frame of this pump: its segment is free again.</summary>
    internal void SegmentWritten() => _freeSegments.Release();

    private unsafe void PumpPipe(TimeProvider time)
    {
        var added = false;
        _pipe!.DangerousAddRef(ref added);
        try
        {
            var fd = (int)_pipe.DangerousGetHandle();
            var flags = Native.fcntl(fd, Native.F_GETFL, 0);
            if (flags < 0 || Native.fcntl(fd, Native.F_SETFL, flags | Native.O_NONBLOCK) < 0)
            {
                throw new IOException($"cannot make the output pipe non-blocking: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
            }

            byte[]? drain = null;
            var segment = TakeSegment();
            var filled = 0;
            while (true)
            {
                // Discarding: read into a buffer of its own, never into a segment a pending frame may still wrap.
                var target = segment ?? (drain ??= new byte[ChunkSize]);
                nint read;
                fixed (byte* pointer = &target[filled])
                {
                    read = Native.read(fd, pointer, (nuint)(target.Length - filled));
                }

                if (read > 0)
                {
                    Bytes += read;
                    if (segment is not null)
                    {
                        filled += (int)read;
                        if (filled == segment.Length)
                        {
                            segment = Deliver(segment, filled);
                            filled = 0;
                        }
                    }

                    continue;
                }

                if (read == 0)
                {
                    break;
                }

                var errno = Marshal.GetLastPInvokeError();
                if (errno == Native.EINTR)
                {
                    continue;
                }

                if (errno != Native.EAGAIN)
                {
                    // Like a read error on a stream: the output ends here.
                    break;
                }

                // The pipe is empty. While the response stream is still writing the previous frame, this one would only
                // wait in the queue: keep it open a moment for what the tool writes next (one frame instead of one per
                // write() of the tool). Otherwise, and after that moment, what was read goes out before waiting for more.
                if (filled > 0 && _freeSegments.CurrentCount == 0 && WaitReadable(fd, CoalesceWaitMilliseconds))
                {
                    continue;
                }

                if (filled > 0)
                {
                    segment = Deliver(segment!, filled);
                    filled = 0;
                }

                if (!WaitReadable(fd, time))
                {
                    Aborted = true;
                    break;
                }
            }

            if (segment is not null)
            {
                if (filled > 0)
                {
                    Send(segment, filled);
                }
                else
                {
                    SegmentWritten();
                }
            }
        }
        finally
        {
            if (added)
            {
                _pipe.DangerousRelease();
            }
        }
    }

    /// <summary>Sends the segment's first <paramref name="filled"/> bytes; returns the next segment to fill, or null when discarding.</summary>
    private byte[]? Deliver(byte[] segment, int filled)
    {
        Send(segment, filled);
        return TakeSegment();
    }

    private void Send(byte[] segment, int filled)
    {
        if (_discard)
        {
            SegmentWritten();
            return;
        }

        var data = UnsafeByteOperations.UnsafeWrap(segment.AsMemory(0, filled));
        var frame = new OutgoingFrame(_isStdout ? new ServerFrame { Stdout = data } : new ServerFrame { Stderr = data }, this);
        if (!Enqueue(frame))
        {
            SegmentWritten();
        }
    }

    /// <summary>A free segment (waiting while both are queued or being written), or null once output is only discarded.</summary>
    private byte[]? TakeSegment()
    {
        if (_discard)
        {
            return null;
        }

        try
        {
            _freeSegments.Wait(_delivery);
        }
        catch (OperationCanceledException)
        {
            // The client is gone; frames still queued are never written, so their segments stay taken.
            _discard = true;
            return null;
        }

        // The response stream writes frames in order, so segments come back in the order they were sent.
        var index = _nextSegment;
        _nextSegment = (index + 1) % SegmentCount;
        return _segments[index] ??= ArrayPool<byte>.Shared.Rent(SegmentSize);
    }

    /// <summary>True when the pipe has data (or is hung up) within <paramref name="milliseconds"/>.</summary>
    private static unsafe bool WaitReadable(int fd, int milliseconds)
    {
        var poll = new Native.PollFd { Fd = fd, Events = Native.POLLIN };
        return Native.poll(&poll, 1, milliseconds) > 0;
    }

    /// <summary>Waits until the pipe has data or its writers are gone; false when <see cref="AbortRead"/> was called.</summary>
    private unsafe bool WaitReadable(int fd, TimeProvider time)
    {
        Interlocked.Exchange(ref _readStartedTimestamp, time.GetTimestamp());
        try
        {
            while (!_abortRead.IsCancellationRequested)
            {
                var poll = new Native.PollFd { Fd = fd, Events = Native.POLLIN };
                var rc = Native.poll(&poll, 1, PollIntervalMilliseconds);
                if (rc > 0 || (rc < 0 && Marshal.GetLastPInvokeError() != Native.EINTR))
                {
                    // Readable, hung up or in error: the next read tells which.
                    return true;
                }
            }

            return false;
        }
        finally
        {
            Interlocked.Exchange(ref _readStartedTimestamp, 0);
        }
    }

    private void PumpTerminal(TimeProvider time)
    {
        var buffer = new byte[ChunkSize];
        while (true)
        {
            int read;
            Interlocked.Exchange(ref _readStartedTimestamp, time.GetTimestamp());
            try
            {
                read = _terminal!.Read(buffer, _abortRead.Token);
            }
            catch (OperationCanceledException)
            {
                Aborted = true;
                break;
            }
            catch (IOException)
            {
                break;
            }
            finally
            {
                Interlocked.Exchange(ref _readStartedTimestamp, 0);
            }

            if (read == 0)
            {
                break;
            }

            Bytes += read;
            if (!_discard)
            {
                // A copy: the buffer is refilled right away. This thread exists for this terminal only: blocking it
                // while the channel is full is the backpressure.
                var data = ByteString.CopyFrom(buffer, 0, read);
                Enqueue(new OutgoingFrame(new ServerFrame { Stderr = data }));
            }
        }
    }

    /// <summary>Queues a frame, blocking this read thread while the channel is full; false (and discarding from now on) when the client is gone.</summary>
    private bool Enqueue(OutgoingFrame frame)
    {
        if (_frames.TryWrite(frame))
        {
            return true;
        }

        try
        {
            _frames.WriteAsync(frame, _delivery).AsTask().GetAwaiter().GetResult();
            return true;
        }
        catch (Exception ex) when (ex is OperationCanceledException or ChannelClosedException)
        {
            // The client is gone: keep draining so the tool never blocks on a full pipe while it shuts down.
            _discard = true;
            return false;
        }
    }
}
