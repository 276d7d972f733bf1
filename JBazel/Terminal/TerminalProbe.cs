using System.Runtime.InteropServices;
using Rbs.JBazel.Configuration;
using Rbs.V1;

namespace Rbs.JBazel.Terminal;

/// <summary>What the remote bazel needs to know about the client's terminal and locale.</summary>
internal static partial class TerminalProbe
{
    /// <summary>Variables forwarded to the agent exactly; plus every <c>LC_*</c>.</summary>
    public static readonly IReadOnlyList<string> ForwardedVariables =
        ["TERM", "LANG", "TZ", "COLUMNS", "LINES", "NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE", "COLORTERM"];

    public static Dictionary<string, string> ForwardedEnvironment(CliEnvironment environment)
    {
        var forwarded = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, value) in environment.Variables)
        {
            if (ForwardedVariables.Contains(name) || name.StartsWith("LC_", StringComparison.Ordinal))
            {
                forwarded[name] = value;
            }
        }

        return forwarded;
    }

    /// <summary>
    /// What the agent needs to give bazel the same terminal: with stderr on a terminal it gets a pseudo-terminal of
    /// that window's size. stdin counts as a terminal only when jbazel may read it (not a background job), since the
    /// agent then expects raw keystrokes.
    /// </summary>
    public static TerminalInfo Probe(CliEnvironment environment)
    {
        var info = new TerminalInfo
        {
            StdinIsTty = !Console.IsInputRedirected && MayReadStdin(),
            StdoutIsTty = !Console.IsOutputRedirected,
            StderrIsTty = !Console.IsErrorRedirected,
            Term = environment.Get("TERM") ?? "",
        };

        if (info.StdoutIsTty || info.StderrIsTty || !Console.IsInputRedirected)
        {
            // The remote terminal stands for stderr's, so its size comes first.
            var fd = info.StderrIsTty ? 2 : info.StdoutIsTty ? 1 : 0;
            if (TryGetWindowSize(fd, out var columns, out var rows))
            {
                info.Columns = columns;
                info.Rows = rows;
            }
            else
            {
                info.Columns = ParseOrZero(environment.Get("COLUMNS"));
                info.Rows = ParseOrZero(environment.Get("LINES"));
            }
        }

        return info;
    }

    private static int ParseOrZero(string? text) => int.TryParse(text, out var n) && n > 0 ? n : 0;

    /// <summary>The window size of the terminal on <paramref name="fd"/> (TIOCGWINSZ); false when it is none or reports 0 columns.</summary>
    public static bool TryGetWindowSize(int fd, out int columns, out int rows)
    {
        columns = rows = 0;
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS())
        {
            return false;
        }

        // Not Console.WindowWidth: that initializes .NET's terminal handling (and writes keypad mode
        // escapes to the terminal) — jbazel only passes bytes through.
        nuint request = OperatingSystem.IsMacOS() ? 0x40087468u : 0x5413u;
        if (IoctlWindowSize(fd, request, out var size) != 0 || size.Columns == 0)
        {
            return false;
        }

        columns = size.Columns;
        rows = size.Rows;
        return true;
    }

    /// <summary>
    /// False when stdin is a terminal and jbazel is a background job on it (<c>jbazel build //... &amp;</c>):
    /// reading the terminal then would stop the whole process with SIGTTIN.
    /// </summary>
    public static bool MayReadStdin()
    {
        if (Console.IsInputRedirected || !(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()))
        {
            return true;
        }

        var foreground = TerminalForegroundGroup(0);
        return foreground < 0 || foreground == ProcessGroup();
    }

    /// <summary>True when <paramref name="fd"/> is a terminal whose foreground process group is jbazel's.</summary>
    public static bool IsForegroundJob(int fd) =>
        (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) && TerminalForegroundGroup(fd) is var group && group >= 0 && group == ProcessGroup();

    [LibraryImport("libc", EntryPoint = "tcgetpgrp")]
    private static partial int TerminalForegroundGroup(int fd);

    [LibraryImport("libc", EntryPoint = "getpgrp")]
    private static partial int ProcessGroup();

    [StructLayout(LayoutKind.Sequential)]
    private struct WindowSize
    {
        public ushort Rows;
        public ushort Columns;
        public ushort XPixels;
        public ushort YPixels;
    }

    [LibraryImport("libc", EntryPoint = "ioctl")]
    private static partial int IoctlWindowSize(int fd, nuint request, out WindowSize size);
}
