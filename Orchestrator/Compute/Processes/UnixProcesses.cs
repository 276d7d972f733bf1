using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace Rbs.Orchestrator.Compute.Processes;

/// <summary>The few POSIX operations .NET does not expose: signals, /proc inspection, file ownership and credentials.</summary>
internal static partial class UnixProcesses
{
    public const int SigKill = 9;
    public const int SigTerm = 15;

    /// <summary>Sends <paramref name="signal"/> to a process (or, with a negative id, a process group).</summary>
    public static bool Signal(int pid, int signal) => Kill(pid, signal) == 0;

    /// <summary>
    /// Whether <paramref name="pid"/> is a live process whose command line mentions
    /// <paramref name="agentId"/>. Agent ids are 21 random characters, so this survives pid reuse:
    /// a recycled pid belongs to some other command line. Zombies have an empty command line and count
    /// as gone.
    /// </summary>
    public static bool IsAgentProcess(int pid, string agentId)
    {
        if (pid <= 0 || string.IsNullOrEmpty(agentId))
        {
            return false;
        }

        try
        {
            var cmdline = File.ReadAllBytes($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/cmdline");
            return cmdline.AsSpan().IndexOf(Encoding.UTF8.GetBytes(agentId)) >= 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>All live processes whose command line mentions <paramref name="agentId"/>.</summary>
    public static IReadOnlyList<int> FindAgentProcesses(string agentId)
    {
        var result = new List<int>();
        IEnumerable<string> entries;
        try
        {
            entries = Directory.EnumerateDirectories("/proc");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return result;
        }

        foreach (var entry in entries)
        {
            if (int.TryParse(Path.GetFileName(entry), NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
                && pid != Environment.ProcessId
                && IsAgentProcess(pid, agentId))
            {
                result.Add(pid);
            }
        }

        return result;
    }

    /// <summary>The real uid of a live process (from <c>/proc/PID/status</c>), or null when it is gone or unreadable.</summary>
    public static uint? ProcessUid(int pid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/status"))
            {
                if (line.StartsWith("Uid:", StringComparison.Ordinal))
                {
                    var fields = line[4..].Split('\t', ' ', StringSplitOptions.RemoveEmptyEntries);
                    return fields.Length > 0 && uint.TryParse(fields[0], NumberStyles.None, CultureInfo.InvariantCulture, out var uid) ? uid : null;
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }

        return null;
    }

    /// <summary>This process's effective uid.</summary>
    public static uint EffectiveUid() => GetEffectiveUid();

    /// <summary>
    /// Whether this process may run children under other uids and hand them files: CAP_SETUID, CAP_SETGID, CAP_CHOWN
    /// and CAP_FOWNER in its effective set (root has them unless a container dropped them).
    /// </summary>
    public static bool CanSwitchUsers()
    {
        const int capChown = 0, capFowner = 3, capSetgid = 6, capSetuid = 7;
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
            {
                if (line.StartsWith("CapEff:", StringComparison.Ordinal)
                    && ulong.TryParse(line[7..].Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var caps))
                {
                    const ulong needed = (1UL << capChown) | (1UL << capFowner) | (1UL << capSetgid) | (1UL << capSetuid);
                    return (caps & needed) == needed;
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }

        return false;
    }

    /// <summary>Gives <paramref name="path"/> (never a symlink's target) to <paramref name="uid"/>:<paramref name="gid"/>.</summary>
    public static void ChangeOwner(string path, uint uid, uint gid)
    {
        if (LChown(path, uid, gid) != 0)
        {
            throw new IOException($"cannot give {path} to uid {uid}: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    /// <summary>The owner uid of <paramref name="path"/> (not following a final symlink), or null when it does not exist.</summary>
    public static uint? OwnerUid(string path)
    {
        // statx's buffer layout is the same on every architecture (unlike struct stat): stx_uid is the u32 at offset 20.
        const int atFdCwd = -100, atSymlinkNoFollow = 0x100, statxUid = 0x8;
        Span<byte> buffer = stackalloc byte[256];
        return Statx(atFdCwd, path, atSymlinkNoFollow, statxUid, ref MemoryMarshal.GetReference(buffer)) == 0
            ? BitConverter.ToUInt32(buffer[20..24])
            : null;
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "geteuid")]
    private static partial uint GetEffectiveUid();

    [LibraryImport("libc", EntryPoint = "lchown", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int LChown(string path, uint owner, uint group);

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int dirFd, string path, int flags, uint mask, ref byte buffer);
}
