using System.Diagnostics;

namespace Rbs.Tests.Infrastructure;

/// <summary>Stops what a test stack started (each stack keeps its own list, in start order).</summary>
internal static class StartedProcesses
{
    /// <summary>Kills each still running process with its children, last started first, and disposes it; a process that will not stop is logged, not thrown.</summary>
    public static async Task StopAllAsync(IEnumerable<Process> processes, Action<string> log)
    {
        foreach (var process in processes.Reverse())
        {
            try
            {
                if (!process.HasExited)
                {
                    process.Kill(entireProcessTree: true);
                    await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
                }
            }
            catch (Exception e) when (e is InvalidOperationException or TimeoutException or System.ComponentModel.Win32Exception)
            {
                log($"could not stop pid {process.Id}: {e.Message}");
            }

            process.Dispose();
        }
    }
}
