using Grpc.Core;
using Rbs.V1;

namespace Rbs.JBazel.Remote;

/// <summary>
/// Serializes writes to the ExecuteCommand request stream: the stdin pump and Ctrl-C both write, and
/// gRPC allows one write in flight at a time.
/// </summary>
internal sealed class FrameWriter(IClientStreamWriter<ClientFrame> stream) : IDisposable
{
    private readonly SemaphoreSlim _gate = new(1, 1);

    public async Task WriteAsync(ClientFrame frame, CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken);
        try
        {
            await stream.WriteAsync(frame, cancellationToken);
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Best effort within <paramref name="timeout"/>: for interrupts, where the call may already be gone.</summary>
    public async Task<bool> TryWriteAsync(ClientFrame frame, TimeSpan timeout)
    {
        try
        {
            using var timeoutSource = new CancellationTokenSource(timeout);
            await WriteAsync(frame, timeoutSource.Token);
            return true;
        }
        catch (Exception ex) when (ex is RpcException or OperationCanceledException or InvalidOperationException or ObjectDisposedException or IOException)
        {
            return false;
        }
    }

    /// <summary>Ends the request stream (half-close), best effort within <paramref name="timeout"/>.</summary>
    public async Task<bool> TryCompleteAsync(TimeSpan timeout)
    {
        try
        {
            using var timeoutSource = new CancellationTokenSource(timeout);
            await _gate.WaitAsync(timeoutSource.Token);
            try
            {
                await stream.CompleteAsync().WaitAsync(timeoutSource.Token);
                return true;
            }
            finally
            {
                _gate.Release();
            }
        }
        catch (Exception ex) when (ex is RpcException or OperationCanceledException or InvalidOperationException or ObjectDisposedException or IOException)
        {
            return false;
        }
    }

    public void Dispose() => _gate.Dispose();
}
