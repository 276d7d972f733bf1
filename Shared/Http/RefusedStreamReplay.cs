// Linked into jbazel (and, as all of Shared/, the servers and Tests): BCL only, trim-safe.
using System.Net;
using System.Net.Http;

namespace Rbs.Shared.Http;

/// <summary>
/// Makes a gRPC call safe to send again when its server did not process it. HTTP/2 lets a client resend a stream that a
/// server's GOAWAY left unprocessed (RFC 9113 §6.8), and SocketsHttpHandler does so itself, but by serializing the
/// request content a second time; grpc-dotnet's streaming content cannot be serialized twice, so the second stream
/// carries an empty body (the agent then sees a call that ends before its first frame: "InvalidArgument" for a build
/// that never started), or a write that was under way fails with "the HTTP/2 server closed the connection". That
/// happens whenever a stream crosses a gateway's or an agent's graceful stop on the wire. So each request's content here
/// keeps the bytes it sent until the response headers arrive (at most <see cref="MaxReplayBytes"/>) and replays them
/// onto the new stream, which then takes the writes that follow.
/// </summary>
/// <param name="inner">The handler that sends (SocketsHttpHandler, or one that wraps it).</param>
/// <param name="maxReplayBytes">How many of a request's bytes are kept for a replay; beyond that a refused stream fails.</param>
internal sealed class RefusedStreamReplayHandler(HttpMessageHandler inner, int maxReplayBytes = RefusedStreamReplayHandler.DefaultMaxReplayBytes)
    : DelegatingHandler(inner)
{
    /// <summary>256 KiB: a command's start frame and early stdin, or a sync call's first batch.</summary>
    public const int DefaultMaxReplayBytes = 256 * 1024;

    public int MaxReplayBytes => maxReplayBytes;

    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        if (request.Content is not { } original)
        {
            return await base.SendAsync(request, cancellationToken);
        }

        var content = new ReplayableContent(original, maxReplayBytes);
        request.Content = content;
        try
        {
            return await base.SendAsync(request, cancellationToken);
        }
        finally
        {
            // Response headers (or the call's failure): no stream of this call is sent again, so the kept bytes go.
            content.SendFinished();
        }
    }

    /// <summary>
    /// The request's content, sent through a <see cref="ReplayStream"/>: the inner content is serialized once (its
    /// writer keeps that stream), and a second serialization (a resent stream) moves the stream onto the new target
    /// after replaying what was kept.
    /// </summary>
    private sealed class ReplayableContent : HttpContent
    {
        private readonly HttpContent _inner;
        private readonly ReplayStream _stream;
        private readonly Lock _sync = new();
        private Task? _serializing;

        public ReplayableContent(HttpContent inner, int maxReplayBytes)
        {
            _inner = inner;
            _stream = new ReplayStream(maxReplayBytes);
            foreach (var header in inner.Headers)
            {
                Headers.TryAddWithoutValidation(header.Key, header.Value);
            }
        }

        public void SendFinished() => _stream.Finish();

        protected override Task SerializeToStreamAsync(Stream stream, TransportContext? context) =>
            SerializeToStreamAsync(stream, context, CancellationToken.None);

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context, CancellationToken cancellationToken)
        {
            Task serializing;
            bool first;
            lock (_sync)
            {
                first = _serializing is null;
                if (first)
                {
                    _stream.Start(stream);
                    _serializing = _inner.CopyToAsync(_stream, context, CancellationToken.None);
                }

                serializing = _serializing!;
            }

            if (!first)
            {
                await _stream.RetargetAsync(stream, cancellationToken);
            }

            // The inner content ends when its writer completes the request. Like grpc-dotnet's own content, this does
            // not end on the attempt's cancellation: SocketsHttpHandler resends a refused stream only while its body is
            // still being sent (a body that failed with the cancellation fails the call instead).
            await serializing;
        }

        protected override bool TryComputeLength(out long length)
        {
            length = -1;
            return false;
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _inner.Dispose();
                _stream.Finish();
            }

            base.Dispose(disposing);
        }
    }

    /// <summary>
    /// The write-only stream the inner content writes to: forwards to the current attempt's request stream and keeps a
    /// copy of the bytes until <see cref="Finish"/>. A write or flush that fails on an attempt that is being replaced is
    /// not an error: its bytes were kept and go to the new attempt by the replay.
    /// </summary>
    private sealed class ReplayStream(int maxReplayBytes) : Stream
    {
        // Orders a replay before the writes that follow it; held briefly by each write (to keep and pick the target).
        private readonly SemaphoreSlim _gate = new(1, 1);
        private readonly Lock _sync = new();
        private MemoryStream? _kept = new();
        private bool _overflowed;
        private bool _finished;
        private Stream? _target;
        private int _generation;
        private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public override bool CanRead => false;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public void Start(Stream target)
        {
            lock (_sync)
            {
                _target = target;
            }
        }

        public void Finish()
        {
            lock (_sync)
            {
                _finished = true;
                _kept = null;
                Signal();
            }
        }

        /// <summary>Replays the kept bytes onto <paramref name="target"/>, which then takes every further write.</summary>
        public async Task RetargetAsync(Stream target, CancellationToken cancellationToken)
        {
            await _gate.WaitAsync(cancellationToken);
            try
            {
                MemoryStream kept;
                lock (_sync)
                {
                    if (_finished)
                    {
                        throw new InvalidOperationException("the request was sent again after its response began");
                    }

                    if (_overflowed || _kept is null)
                    {
                        throw OverflowError(null);
                    }

                    kept = _kept;
                }

                // The writes that follow wait on the gate, so what is kept does not change meanwhile.
                if (kept.Length > 0)
                {
                    await target.WriteAsync(kept.GetBuffer().AsMemory(0, (int)kept.Length), cancellationToken);
                }

                await target.FlushAsync(cancellationToken);
                lock (_sync)
                {
                    _target = target;
                    _generation++;
                    Signal();
                }
            }
            finally
            {
                _gate.Release();
            }
        }

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            var (target, generation) = await KeepAsync(buffer, cancellationToken);
            try
            {
                await target.WriteAsync(buffer, cancellationToken);
            }
            catch (Exception e)
            {
                if (!await ReplacedAsync(generation, cancellationToken))
                {
                    if (NeededTooBigAReplay)
                    {
                        throw OverflowError(e);
                    }

                    throw;
                }
            }
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override async Task FlushAsync(CancellationToken cancellationToken)
        {
            var (target, generation) = await KeepAsync(ReadOnlyMemory<byte>.Empty, cancellationToken);
            try
            {
                await target.FlushAsync(cancellationToken);
            }
            catch (Exception e)
            {
                if (!await ReplacedAsync(generation, cancellationToken))
                {
                    if (NeededTooBigAReplay)
                    {
                        throw OverflowError(e);
                    }

                    throw;
                }
            }
        }

        public override void Flush() => FlushAsync(CancellationToken.None).GetAwaiter().GetResult();

        public override void Write(byte[] buffer, int offset, int count) =>
            WriteAsync(buffer.AsMemory(offset, count), CancellationToken.None).AsTask().GetAwaiter().GetResult();

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            // The request streams belong to SocketsHttpHandler; nothing of ours to release but the kept bytes.
            if (disposing)
            {
                Finish();
            }

            base.Dispose(disposing);
        }

        /// <summary>Keeps <paramref name="bytes"/> (while a replay is possible) and picks the target, as one step.</summary>
        private async Task<(Stream Target, int Generation)> KeepAsync(ReadOnlyMemory<byte> bytes, CancellationToken cancellationToken)
        {
            await _gate.WaitAsync(cancellationToken);
            try
            {
                lock (_sync)
                {
                    return Keep(bytes.Span);
                }
            }
            finally
            {
                _gate.Release();
            }
        }

        private (Stream Target, int Generation) Keep(ReadOnlySpan<byte> bytes)
        {
            if (_kept is not null && bytes.Length > 0)
            {
                if (_kept.Length + bytes.Length > maxReplayBytes)
                {
                    _overflowed = true;
                    _kept = null;
                }
                else
                {
                    _kept.Write(bytes);
                }
            }

            return (_target ?? throw new InvalidOperationException("the request content was not started"), _generation);
        }

        /// <summary>
        /// After a failed write or flush: true once a new attempt took over (the bytes reach it by the replay), false
        /// once the send finished without one (the failure is the call's).
        /// </summary>
        private async Task<bool> ReplacedAsync(int generation, CancellationToken cancellationToken)
        {
            while (true)
            {
                Task changed;
                lock (_sync)
                {
                    if (_generation != generation)
                    {
                        return true;
                    }

                    if (_finished || _overflowed)
                    {
                        return false;
                    }

                    changed = _changed.Task;
                }

                await changed.WaitAsync(cancellationToken);
            }
        }

        /// <summary>A replay would have been needed (the send did not finish) but more was sent than is kept.</summary>
        private bool NeededTooBigAReplay
        {
            get
            {
                lock (_sync)
                {
                    return _overflowed && !_finished;
                }
            }
        }

        private IOException OverflowError(Exception? failure) => new(
            $"the server did not process the stream after more than {maxReplayBytes} bytes of its request were sent, more than this client keeps to send again; retry the command",
            failure);

        private void Signal()
        {
            var changed = _changed;
            _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            changed.TrySetResult();
        }
    }
}
