namespace Rbs.JBazel.Remote;

/// <summary>
/// Sizes the shared array pool for the agent's output stream. The HTTP/2 handler holds a stream's received bytes in
/// 16 KiB blocks rented from <c>ArrayPool&lt;byte&gt;.Shared</c>, up to the stream window (<see cref="ChannelPool.StreamWindowSize"/>:
/// 256 blocks). The shared pool keeps only 32 arrays of a size per core, so most blocks of a full window were fresh
/// allocations: zeroed, page-faulted and collected, about a third of jbazel's CPU on a 1 GiB stdout (bench/README.md,
/// "1 GiB stdout"). With room for a whole window the same blocks come round again. The pool reads this setting once,
/// at its first use, so it is set first thing in Main; a value the user set is kept. jbazel starts no child process
/// that would inherit it.
/// </summary>
internal static class ReceiveBufferPool
{
    public const string ArraysPerPartitionVariable = "DOTNET_SYSTEM_BUFFERS_SHAREDARRAYPOOL_MAXARRAYSPERPARTITION";

    /// <summary>SocketsHttpHandler's block size for a stream's received data.</summary>
    private const int HandlerBlockSize = 16 * 1024;

    public static void Reserve()
    {
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable(ArraysPerPartitionVariable)))
        {
            Environment.SetEnvironmentVariable(ArraysPerPartitionVariable,
                (ChannelPool.StreamWindowSize / HandlerBlockSize).ToString(System.Globalization.CultureInfo.InvariantCulture));
        }
    }
}
