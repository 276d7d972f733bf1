namespace Rbs.Tests.Agent;

internal static class Processes
{
    /// <summary>True when the pid no longer runs (absent, or a zombie waiting for its parent to reap it).</summary>
    public static bool IsGone(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var state = stat[stat.LastIndexOf(')') + 2];
            return state is 'Z' or 'X';
        }
        catch (IOException)
        {
            return true;
        }
    }

    public static async Task WaitGoneAsync(int pid, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!IsGone(pid))
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"process {pid} is still running after {timeout}");
            }

            await Task.Delay(50);
        }
    }
}
