namespace Rbs.Agent.Sync;

/// <summary>
/// Recognises "no space left" (ENOSPC) and "disk quota exceeded" (EDQUOT) failures, so the agent can say that its disk
/// is full instead of reporting an internal error: the next step is to free space, not to report a bug.
/// </summary>
internal static class DiskFull
{
    // Linux errno values; .NET's IOException for a failed file operation on Unix carries the errno as its HResult.
    private const int ENOSPC = 28;
    private const int EDQUOT = 122;

    // Windows: ERROR_DISK_FULL and ERROR_HANDLE_DISK_FULL as HRESULTs (for completeness; agents run on Linux).
    private const int ErrorDiskFull = unchecked((int)0x80070070);
    private const int ErrorHandleDiskFull = unchecked((int)0x80070027);

    public static bool Is(Exception? exception)
    {
        for (var e = exception; e is not null; e = e.InnerException)
        {
            if (e is IOException io && (io.HResult is ENOSPC or EDQUOT or ErrorDiskFull or ErrorHandleDiskFull
                || io.Message.Contains("No space left on device", StringComparison.OrdinalIgnoreCase)
                || io.Message.Contains("Disk quota exceeded", StringComparison.OrdinalIgnoreCase)
                || io.Message.Contains($"(errno {ENOSPC})", StringComparison.Ordinal)
                || io.Message.Contains($"(errno {EDQUOT})", StringComparison.Ordinal)))
            {
                return true;
            }
        }

        return false;
    }
}
