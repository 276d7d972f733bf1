using System.Runtime.InteropServices;

namespace Rbs.JBazel.Terminal;

/// <summary>
/// The laptop's terminal in raw input mode for a command whose stdin is the agent's pseudo-terminal, as <c>ssh -t</c>
/// does: keystrokes go to the agent one by one, and the remote terminal's line discipline does the echo, line editing
/// and ^D that the local one would have done. Restored on every way out: <see cref="Dispose"/> (normal exit, errors,
/// Ctrl-C, the second Ctrl-C, SIGTERM, a broken pipe or a lost agent all return through it), SIGHUP, and process exit.
/// </summary>
/// <remarks>
/// Only input processing changes. Output processing (OPOST/ONLCR) stays on: the agent's terminal sends the tool's bytes
/// untranslated, so they go through the laptop's line discipline exactly as local bazel's output does.
/// ISIG stays on with only its interrupt character, so Ctrl-C is a local SIGINT to jbazel and keeps its meaning (the
/// first interrupts bazel, which prints its own message and exits 8; the second leaves at once), even when the agent is
/// unreachable. ^\ and ^Z are sent as bytes instead, where the remote line discipline turns ^\ into SIGQUIT for bazel
/// (its thread dump, as locally); ^Z does nothing there (a session without job control). A jbazel killed with SIGKILL
/// leaves the terminal raw (`stty sane` or `reset` repairs it), like any program; one stopped with `kill -TSTP` keeps
/// it raw until `fg` resumes it (the runtime's PosixSignalRegistration cannot restore before a stop: it swallows it).
/// </remarks>
internal sealed unsafe partial class RawMode : IDisposable
{
    private const int TermiosBufferSize = 256;

    private static readonly TermiosLayout s_layout = OperatingSystem.IsMacOS() ? TermiosLayout.MacOS : TermiosLayout.Linux;

    private readonly int _fd;
    private readonly byte[] _saved;
    private readonly Lock _lock = new();
    private readonly List<PosixSignalRegistration> _registrations = [];
    private bool _restored;

    private RawMode(int fd, byte[] saved)
    {
        _fd = fd;
        _saved = saved;
    }

    /// <summary>The terminal settings in force (opaque bytes), for tests; null when <paramref name="fd"/> is not a terminal.</summary>
    internal static byte[]? Snapshot(int fd)
    {
        var termios = new byte[TermiosBufferSize];
        fixed (byte* pointer = termios)
        {
            return GetAttributes(fd, pointer) == 0 ? termios : null;
        }
    }

    /// <summary>
    /// Puts the terminal on <paramref name="fd"/> in raw input mode; null (nothing changed) when it is not a terminal,
    /// not the platform's, or jbazel is not its foreground job (tcsetattr would stop a background job with SIGTTOU).
    /// </summary>
    public static RawMode? Enter(int fd)
    {
        if (!(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) || !TerminalProbe.IsForegroundJob(fd))
        {
            return null;
        }

        var saved = new byte[TermiosBufferSize];
        fixed (byte* pointer = saved)
        {
            if (GetAttributes(fd, pointer) != 0)
            {
                return null;
            }
        }

        var raw = (byte[])saved.Clone();
        fixed (byte* pointer = raw)
        {
            s_layout.MakeRawInput(pointer);
        }

        var mode = new RawMode(fd, saved);
        // Hooks first: a signal between tcsetattr and their registration would otherwise leave the terminal raw.
        mode.RegisterSignalHooks();
        if (!mode.Apply(raw))
        {
            mode.Dispose();
            return null;
        }

        return mode;
    }

    /// <summary>Restores the settings saved on entry. Idempotent and safe from any thread.</summary>
    public void Dispose()
    {
        Restore();
        foreach (var registration in _registrations)
        {
            registration.Dispose();
        }

        AppDomain.CurrentDomain.ProcessExit -= OnProcessExit;
    }

    private void RegisterSignalHooks()
    {
        AppDomain.CurrentDomain.ProcessExit += OnProcessExit;
        if (!(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()))
        {
            return;
        }

        // The default action (terminate) still runs after the handler: it only puts the terminal back first.
        _registrations.Add(PosixSignalRegistration.Create(PosixSignal.SIGHUP, _ => Restore()));
    }

    private void OnProcessExit(object? sender, EventArgs e) => Restore();

    private void Restore()
    {
        lock (_lock)
        {
            if (!_restored)
            {
                _restored = true;
                Apply(_saved);
            }
        }
    }

    private bool Apply(byte[] termios)
    {
        fixed (byte* pointer = termios)
        {
            // TCSADRAIN, as ssh does: output already written is shown under the settings it was written with.
            while (SetAttributes(_fd, s_layout.Drain, pointer) != 0)
            {
                if (Marshal.GetLastPInvokeError() != Eintr)
                {
                    return false;
                }
            }
        }

        return true;
    }

    private const int Eintr = 4;

    [LibraryImport("libc", EntryPoint = "tcgetattr", SetLastError = true)]
    private static partial int GetAttributes(int fd, byte* termios);

    [LibraryImport("libc", EntryPoint = "tcsetattr", SetLastError = true)]
    private static partial int SetAttributes(int fd, int optionalActions, byte* termios);

    /// <summary>
    /// Where struct termios keeps its fields and what its flag bits are: Linux (glibc, 4-byte tcflag_t, c_cc at 17) and
    /// macOS (8-byte tcflag_t, c_cc at 32). Values from each platform's &lt;termios.h&gt;.
    /// </summary>
    private sealed class TermiosLayout
    {
        public static readonly TermiosLayout Linux = new()
        {
            FlagSize = 4,
            IflagOffset = 0,
            LflagOffset = 12,
            CcOffset = 17,
            // IGNBRK BRKINT PARMRK ISTRIP INLCR IGNCR ICRNL IXON
            InputFlagsCleared = 0x1 | 0x2 | 0x8 | 0x20 | 0x40 | 0x80 | 0x100 | 0x400,
            // ECHO ECHONL ICANON IEXTEN
            LocalFlagsCleared = 0x8 | 0x40 | 0x2 | 0x8000,
            Vmin = 6,
            Vtime = 5,
            Disabled = [1 /* VQUIT */, 10 /* VSUSP */],
            DisabledValue = 0,
            Drain = 1,
        };

        public static readonly TermiosLayout MacOS = new()
        {
            FlagSize = 8,
            IflagOffset = 0,
            LflagOffset = 24,
            CcOffset = 32,
            // IGNBRK BRKINT PARMRK ISTRIP INLCR IGNCR ICRNL IXON
            InputFlagsCleared = 0x1 | 0x2 | 0x8 | 0x20 | 0x40 | 0x80 | 0x100 | 0x200,
            // ECHO ECHONL ICANON IEXTEN
            LocalFlagsCleared = 0x8 | 0x10 | 0x100 | 0x400,
            Vmin = 16,
            Vtime = 17,
            Disabled = [9 /* VQUIT */, 10 /* VSUSP */, 11 /* VDSUSP */],
            DisabledValue = 0xff,
            Drain = 1,
        };

        public required int FlagSize { get; init; }

        public required int IflagOffset { get; init; }

        public required int LflagOffset { get; init; }

        public required int CcOffset { get; init; }

        public required ulong InputFlagsCleared { get; init; }

        public required ulong LocalFlagsCleared { get; init; }

        public required int Vmin { get; init; }

        public required int Vtime { get; init; }

        public required int[] Disabled { get; init; }

        public required byte DisabledValue { get; init; }

        /// <summary>TCSADRAIN.</summary>
        public required int Drain { get; init; }

        public void MakeRawInput(byte* termios)
        {
            Clear(termios + IflagOffset, InputFlagsCleared);
            Clear(termios + LflagOffset, LocalFlagsCleared);
            var cc = termios + CcOffset;
            cc[Vmin] = 1;
            cc[Vtime] = 0;
            foreach (var index in Disabled)
            {
                cc[index] = DisabledValue;
            }
        }

        private void Clear(byte* flags, ulong bits)
        {
            if (FlagSize == 4)
            {
                *(uint*)flags &= ~(uint)bits;
            }
            else
            {
                *(ulong*)flags &= ~bits;
            }
        }
    }
}
