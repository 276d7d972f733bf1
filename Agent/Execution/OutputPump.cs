using System.Threading.Channels;
using Google.Protobuf;
using Rbs.V1;

namespace Rbs.Agent.Execution;

/// <summary>
/// Copies one of the tool's output pipes into the command's bounded frame channel, byte for byte. When the channel is
/// full the pump stops reading, the pipe fills and the tool blocks in write(): a slow client slows the tool down
/// instead of growing the agent's memory.
/// </summary>
internal sealed class OutputPump(Stream pipe, bool isStdout, ChannelWriter<ServerFrame> frames, CancellationToken delivery) : IDisposable
{
    /// <summary>64 KiB: the Linux pipe buffer size, so one read usually empties the pipe.</summary>
    public const int ChunkSize = 64 * 1024;

    private readonly CancellationTokenSource _abortRead = new();
    private long _readStartedTimestamp;

    public long Bytes { get; private set; }

    /// <summary>True when reading stopped because <see cref="AbortRead"/> was called, not at EOF.</summary>
    public bool Aborted { get; private set; }

    /// <summary>When the pending read started (TimeProvider timestamp), or 0 when not waiting on the pipe.</summary>
    public long ReadStartedTimestamp => Interlocked.Read(ref _readStartedTimestamp);

    public async Task RunAsync(TimeProvider time)
    {
        var buffer = new byte[ChunkSize];
        var discard = delivery.IsCancellationRequested;
        while (true)
        {
            int read;
            Interlocked.Exchange(ref _readStartedTimestamp, time.GetTimestamp());
            try
            {
                read = await pipe.ReadAsync(buffer, _abortRead.Token);
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
            if (discard)
            {
                // The client is gone: keep draining so the tool never blocks on a full pipe while it shuts down.
                continue;
            }

            var data = ByteString.CopyFrom(buffer, 0, read);
            var frame = isStdout ? new ServerFrame { Stdout = data } : new ServerFrame { Stderr = data };
            try
            {
                await frames.WriteAsync(frame, delivery);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ChannelClosedException)
            {
                discard = true;
            }
        }
    }

    /// <summary>Gives up on a pipe that some escaped descendant keeps open after the tool's group is gone.</summary>
    public void AbortRead() => _abortRead.Cancel();

    public void Dispose() => _abortRead.Dispose();
}
